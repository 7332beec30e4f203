// The Probe materializer (see probe.hpp).
#include "probe.hpp"

#include <memory>
#include <stdexcept>
#include <thread>

namespace dmm_test {

namespace {

// pqxx connections are not thread-safe: one per worker thread.
pqxx::connection& thread_connection(const std::string& url) {
  thread_local std::unique_ptr<pqxx::connection> conn;
  thread_local std::string conn_url;
  if (!conn || !conn->is_open() || conn_url != url) {
    conn = std::make_unique<pqxx::connection>(url);
    conn_url = url;
  }
  return *conn;
}

// Records one run when it goes out of scope, whether materialize returned or threw.
class RunRecord {
 public:
  RunRecord(pqxx::connection& conn, const ProbeEnv& env, const Probe& probe)
      : conn_(conn), env_(env), probe_(probe) {
    pqxx::nontransaction tx(conn_);
    started_ = tx.exec1("SELECT clock_timestamp()::text")[0].as<std::string>();
  }
  ~RunRecord() {
    try {
      pqxx::work tx(conn_);
      tx.exec_params(
          "INSERT INTO dmm_test.runs (identity, worker, seq, started, finished) "
          "VALUES ($1, $2, $3, $4::timestamptz, clock_timestamp())",
          probe_.id, env_.worker, probe_.seq, started_);
      tx.commit();
    } catch (...) {
      // A run that cannot be recorded only weakens the test's checks.
    }
  }
  RunRecord(const RunRecord&) = delete;
  RunRecord& operator=(const RunRecord&) = delete;

 private:
  pqxx::connection& conn_;
  const ProbeEnv& env_;
  const Probe& probe_;
  std::string started_;
};

}  // namespace

void ensure_runs_table(pqxx::connection& conn) {
  pqxx::work tx(conn);
  // Concurrent CREATE ... IF NOT EXISTS can still collide: serialize them.
  tx.exec("SELECT pg_advisory_xact_lock(727274)");
  tx.exec("CREATE SCHEMA IF NOT EXISTS dmm_test");
  tx.exec(
      "CREATE TABLE IF NOT EXISTS dmm_test.runs (identity text NOT NULL, worker text NOT NULL, "
      "seq bigint NOT NULL, started timestamptz NOT NULL, finished timestamptz NOT NULL)");
  tx.exec("CREATE INDEX IF NOT EXISTS runs_identity ON dmm_test.runs (identity)");
  tx.commit();
}

dmm::Result Probe::materialize(dmm::Context& ctx) {
  const ProbeEnv& env = ctx.service<ProbeEnv>();
  RunRecord record(thread_connection(env.postgres), env, *this);
  const auto until = std::chrono::steady_clock::now() + env.sleep;
  while (std::chrono::steady_clock::now() < until) {
    if (ctx.stop_requested()) throw std::runtime_error("probe " + id + ": stopped");
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (ctx.attempt() <= fail_times)
    throw std::runtime_error("probe " + id + ": planned failure " + std::to_string(ctx.attempt()));
  return dmm::Result::done();
}

}  // namespace dmm_test
