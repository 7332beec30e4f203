// What PostgreSQL fails with, as the dmm errors a caller can act on: each
// names the bucket and the call, masks the URL's password, and says whether
// the call took effect (docs/DESIGN.md, "Decisions").
#pragma once

#include <cctype>
#include <fmt/format.h>
#include <pqxx/pqxx>
#include <string>
#include <utility>

#include "dmm/errors.hpp"
#include "dmm/url.hpp"
#include "store/pg.hpp"

namespace dmm::detail {

inline std::string without_trailing_space(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  return s;
}

// Runs fn on a connection of `pool` (see PgPool::with_connection for the
// retries); what PostgreSQL still fails with becomes a dmm error naming
// `bucket` and the call (`what`). `autocommit`: fn may run its one statement
// outside a transaction, so a connection that breaks meanwhile leaves it in
// doubt (it may have committed before the break).
template <class Fn>
auto in_postgres(PgPool& pool, const std::string& bucket, const std::string& what, Fn&& fn, bool autocommit = false) {
  try {
    return pool.with_connection(std::forward<Fn>(fn));
  } catch (const pqxx::in_doubt_error& e) {
    throw ConnectionError(fmt::format("bucket '{}': {}: the connection to PostgreSQL at {} broke while committing "
                                      "({}); it may or may not have taken effect: repeat it (an absolute state is "
                                      "safe to notify again)",
                                      bucket, what, shown_postgres(pool.url()), without_trailing_space(e.what())));
  } catch (const pqxx::broken_connection& e) {
    const char* effect = autocommit ? "it may or may not have taken effect: repeat it when the server is back (an "
                                      "absolute state is safe to notify again)"
                                    : "nothing of it took effect: repeat it when the server is back";
    throw ConnectionError(fmt::format("bucket '{}': {}: lost the connection to PostgreSQL at {} ({}); {}", bucket,
                                      what, shown_postgres(pool.url()), without_trailing_space(e.what()), effect));
  } catch (const pqxx::sql_error& e) {
    throw DatabaseError(fmt::format("bucket '{}': {}: PostgreSQL refused it (SQLSTATE {}): {}; nothing of it took "
                                    "effect",
                                    bucket, what, e.sqlstate(), without_trailing_space(e.what())),
                        e.sqlstate());
  }
}

}  // namespace dmm::detail
