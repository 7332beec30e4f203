#include "pg.hpp"

#include <fmt/format.h>

#include "dmm/errors.hpp"
#include "dmm/url.hpp"
#include "store.hpp"

namespace dmm::detail {

std::unique_ptr<pqxx::connection> connect_pg(const std::string& url, std::string_view purpose) {
  std::unique_ptr<pqxx::connection> conn;
  try {
    conn = std::make_unique<pqxx::connection>(url);
  } catch (const std::exception& e) {
    throw ConnectionError(fmt::format("cannot connect to PostgreSQL at {} (for {}): {}; check the URL, that the server "
                                      "runs, and the credentials",
                                      mask_url(url), purpose, mask_url(e.what())));
  }
  // dmm's statements find their rows by key (ids, identities, the kick
  // index). A prepared statement's plan is made once, from the statistics of
  // that moment: planned while a bucket was empty or small (a fresh database,
  // a worker started before a load), it scans the whole table on every call
  // long after the table has grown: 200+ µs per matter instead of ~10 in the
  // bench's latency case (bench/results.md, round 2, item 5). Without
  // sequential scans the planner takes the indexes whatever the statistics
  // say; the few statements with no usable index still scan.
  pqxx::nontransaction(*conn).exec("SET enable_seqscan = off");
  prepare_statements(*conn);
  return conn;
}

bool is_connection_error(const std::exception& e) {
  return dynamic_cast<const pqxx::broken_connection*>(&e) != nullptr ||
         dynamic_cast<const pqxx::in_doubt_error*>(&e) != nullptr ||
         dynamic_cast<const ConnectionError*>(&e) != nullptr;
}

PgPool::Lease::~Lease() {
  if (!conn_ || !conn_->is_open()) return;
  std::lock_guard lock(pool_.mu_);
  if (pool_.idle_.size() < 16) pool_.idle_.push_back(std::move(conn_));
}

PgPool::Lease PgPool::acquire() {
  {
    std::lock_guard lock(mu_);
    if (!idle_.empty()) {
      auto conn = std::move(idle_.back());
      idle_.pop_back();
      return Lease(*this, std::move(conn));
    }
  }
  return Lease(*this, connect_pg(url_, "API calls"));
}

}  // namespace dmm::detail
