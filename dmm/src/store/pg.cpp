#include "store/pg.hpp"

#include <fmt/format.h>

#include "dmm/errors.hpp"
#include "dmm/url.hpp"
#include "store/history.hpp"
#include "store/kicks.hpp"
#include "store/matters.hpp"

namespace dmm::detail {

std::string shown_postgres(const std::string& url) {
  return url.empty() ? "libpq's defaults (PGHOST, PGPORT, PGUSER, PGDATABASE, ~/.pgpass, the local socket)"
                     : mask_url(url);
}

void prepare_statements(pqxx::connection& conn) {
  prepare_matter_statements(conn);
  prepare_kick_statements(conn);
  prepare_history_statements(conn);
}

std::unique_ptr<pqxx::connection> connect_pg(const std::string& url, std::string_view purpose) {
  std::unique_ptr<pqxx::connection> conn;
  try {
    conn = std::make_unique<pqxx::connection>(url);
  } catch (const std::exception& e) {
    throw ConnectionError(fmt::format("cannot connect to PostgreSQL at {} (for {}): {}; check the URL, that the server "
                                      "runs, and the credentials",
                                      shown_postgres(url), purpose, mask_url(e.what())));
  }
  // Session settings for dmm's own statements, which find their rows by key
  // (ids, identities, the kick index):
  // - enable_seqscan, enable_mergejoin, enable_hashjoin off: a plan made from
  //   the statistics of one moment must stay right as the tables grow. With a
  //   bucket empty or small at planning time (a fresh database, a worker
  //   started before a load), plans scanned whole tables, and the write-back
  //   joined its batch to dmm.matter by a merge join that walked the primary
  //   key from the table's first row. Without them the planner takes nested index
  //   probes whatever the statistics say; the few statements with no usable
  //   index still scan.
  // - plan_cache_mode = force_generic_plan: a prepared statement is planned
  //   once per connection. By default PostgreSQL re-plans one whose generic
  //   plan looks dearer than its custom ones, and the write-back, claim and
  //   notify upsert always did: planning them cost more than running them for
  //   small batches.
  // Measured in bench/results.md; the reasons in docs/DESIGN.md, "Hot path".
  // - jit off: with the plans above disabled their costs are huge, above
  //   jit_above_cost, and PostgreSQL JIT-compiled statements that run in
  //   microseconds (LLVM showed in the profile).
  pqxx::nontransaction(*conn).exec(
      "SET enable_seqscan = off; SET enable_mergejoin = off; SET enable_hashjoin = off; "
      "SET plan_cache_mode = force_generic_plan; SET jit = off");
  prepare_statements(*conn);
  return conn;
}

bool is_connection_error(const std::exception& e) {
  return dynamic_cast<const pqxx::broken_connection*>(&e) != nullptr ||
         dynamic_cast<const pqxx::in_doubt_error*>(&e) != nullptr ||
         dynamic_cast<const ConnectionError*>(&e) != nullptr;
}

namespace {

std::int64_t backend_pid(pqxx::transaction_base& tx) {
  return tx.exec("SELECT pg_backend_pid()")[0][0].as<std::int64_t>();
}

[[noreturn]] void refuse(const PgPool& pool, const std::string& bucket, const std::string& seen) {
  throw ConnectionError(fmt::format(
      "bucket '{}': PostgreSQL at {} is reached through a connection pooler in transaction mode ({}); "
      "dmm keeps session state on its connections (prepared statements, session settings, LISTEN for "
      "sweeper wakeups): set pool_mode = session for this database in the pooler (PgBouncer: in [databases] or "
      "[pgbouncer]), or connect to PostgreSQL directly (docs/OPERATIONS.md, \"Connection poolers\")",
      bucket, shown_postgres(pool.url()), seen));
}

}  // namespace

void refuse_transaction_pooling(PgPool& pool, const std::string& bucket) {
  // Client A runs a statement, client B opens a transaction and holds it,
  // then A runs another. A client of PostgreSQL or of a session pooler owns
  // its server session: A sees one backend pid throughout, B another. A
  // transaction pooler lends a server per transaction: B gets the one A just
  // gave back (PgBouncer reuses the last returned), or else A gets another
  // while B holds its own. Three rounds, in case other clients of the pool
  // took servers in between. B is checked before A asks again: with a pool
  // of one server, A would wait for B.
  auto a = pool.acquire();
  auto b = pool.acquire();
  std::int64_t a_pid = 0;
  {
    pqxx::nontransaction tx(*a);
    a_pid = backend_pid(tx);
  }
  for (int round = 0; round < 3; ++round) {
    pqxx::work held(*b);
    if (const auto b_pid = backend_pid(held); b_pid == a_pid)
      refuse(pool, bucket, fmt::format("two connections were served by the same server session, pid {}", b_pid));
    pqxx::nontransaction tx(*a);
    if (const auto again = backend_pid(tx); again != a_pid)
      refuse(pool, bucket,
             fmt::format("one connection was served by server session pid {}, then by pid {}", a_pid, again));
  }
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

void PgPool::ping() {
  with_connection([](pqxx::connection& conn) {
    pqxx::nontransaction(conn).exec("SELECT 1");
    return 0;
  });
}

}  // namespace dmm::detail
