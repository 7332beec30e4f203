// PostgreSQL connections: opening them with clear errors, and a small pool for
// API calls that may come from any thread. pqxx connections are not
// thread-safe: each engine thread owns one, and pool leases are exclusive.
#pragma once

#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <pqxx/pqxx>
#include <string>
#include <string_view>
#include <vector>

#include "dmm/errors.hpp"

namespace dmm::detail {

// The URL for messages, password masked; for an empty one, where libpq looks
// instead (BucketOptions::postgres).
std::string shown_postgres(const std::string& url);

// Prepares every statement of the hot path, the sweep and the history on
// `conn` (connect_pg does; plans_test checks them on a connection of its own).
void prepare_statements(pqxx::connection& conn);

// Opens a connection with every dmm statement prepared. ConnectionError that
// names the URL (password masked) and `purpose` on failure.
std::unique_ptr<pqxx::connection> connect_pg(const std::string& url, std::string_view purpose);

// True for errors after which the connection should be dropped and reopened.
bool is_connection_error(const std::exception& e);

class PgPool {
 public:
  explicit PgPool(std::string url) : url_(std::move(url)) {}

  class Lease {
   public:
    Lease(PgPool& pool, std::unique_ptr<pqxx::connection> conn) : pool_(pool), conn_(std::move(conn)) {}
    Lease(Lease&&) = default;
    ~Lease();
    pqxx::connection& operator*() { return *conn_; }
    pqxx::connection* operator->() { return conn_.get(); }
    // The connection failed: do not return it to the pool.
    void discard() { conn_.reset(); }

   private:
    PgPool& pool_;
    std::unique_ptr<pqxx::connection> conn_;
  };

  Lease acquire();
  const std::string& url() const { return url_; }
  // Throws unless PostgreSQL answers a trivial statement (for /readyz).
  void ping();

  // Runs fn(connection), again on a fresh connection if the pooled one had
  // gone stale (for example after a PostgreSQL restart), and again after a
  // deadlock or serialization failure (fn must be a whole transaction).
  // When the retry after a broken connection cannot connect, the first break
  // is what the caller gets: it may have committed, and the connect error
  // would hide that (the caller's error must say whether the call may have
  // taken effect).
  template <class Fn>
  auto with_connection(Fn&& fn) {
    std::exception_ptr broke;  // the first try's broken connection
    for (int attempt = 1;; ++attempt) {
      std::optional<Lease> acquired;
      try {
        acquired.emplace(acquire());
      } catch (const ConnectionError&) {
        if (broke) std::rethrow_exception(broke);
        throw;
      }
      Lease& lease = *acquired;
      try {
        return fn(*lease);
      } catch (const pqxx::broken_connection&) {
        lease.discard();
        if (attempt >= 2) throw;
        broke = std::current_exception();
      } catch (const pqxx::deadlock_detected&) {
        if (attempt >= 5) throw;
      } catch (const pqxx::serialization_failure&) {
        if (attempt >= 5) throw;
      }
    }
  }

 private:
  const std::string url_;
  std::mutex mu_;
  std::vector<std::unique_ptr<pqxx::connection>> idle_;  // protected by mu_
};

// Throws ConnectionError, naming `bucket` and the fix, when the pool's URL
// reaches PostgreSQL through a pooler that lends server sessions per
// transaction (PgBouncer pool_mode = transaction): dmm keeps
// session state on its connections. docs/OPERATIONS.md, "Connection
// poolers", says how it is detected and what it can miss.
void refuse_transaction_pooling(PgPool& pool, const std::string& bucket);

}  // namespace dmm::detail
