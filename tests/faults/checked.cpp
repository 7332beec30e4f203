#include "checked.hpp"

#include <memory>
#include <random>
#include <stdexcept>
#include <thread>

namespace dmm_faults {
namespace {

// One connection per executor thread; reopened after PostgreSQL restarts.
pqxx::connection& thread_connection(const std::string& url) {
  thread_local std::unique_ptr<pqxx::connection> conn;
  if (!conn || !conn->is_open()) conn = std::make_unique<pqxx::connection>(url);
  return *conn;
}

template <class Fn>
auto with_connection(const std::string& url, Fn&& fn) {
  try {
    return fn(thread_connection(url));
  } catch (const pqxx::broken_connection&) {
    // Drop it; the attempt fails and is retried with a new one.
    thread_connection(url).disconnect();
    throw;
  }
}

double chance() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return std::uniform_real_distribution<double>(0, 1)(rng);
}

}  // namespace

void ensure_schema(pqxx::connection& conn) {
  pqxx::work tx(conn);
  tx.exec("SELECT pg_advisory_xact_lock(727275)");
  tx.exec("CREATE SCHEMA IF NOT EXISTS dmm_faults");
  tx.exec(
      "CREATE TABLE IF NOT EXISTS dmm_faults.runs (run_id bigserial PRIMARY KEY, bucket text NOT NULL, "
      "identity text NOT NULL, worker text NOT NULL, seq bigint NOT NULL, started timestamptz NOT NULL, "
      "finished timestamptz, outcome text)");
  tx.exec("CREATE INDEX IF NOT EXISTS runs_bucket_identity ON dmm_faults.runs (bucket, identity)");
  tx.commit();
}

dmm::Result Checked::materialize(dmm::Context& ctx) {
  const auto& b = ctx.service<Behavior>();
  // The start is recorded durably before anything else: a run that cannot
  // be recorded does not happen.
  const auto run_id = with_connection(b.postgres, [&](pqxx::connection& c) {
    pqxx::nontransaction tx(c);
    return tx
        .exec_params1("INSERT INTO dmm_faults.runs (bucket, identity, worker, seq, started) "
                      "VALUES ($1, $2, $3, $4, clock_timestamp()) RETURNING run_id",
                      b.bucket, id, b.worker, seq)[0]
        .as<long>();
  });
  auto finish = [&](const char* outcome) {
    with_connection(b.postgres, [&](pqxx::connection& c) {
      pqxx::nontransaction tx(c);
      tx.exec_params("UPDATE dmm_faults.runs SET finished = clock_timestamp(), outcome = $2 WHERE run_id = $1",
                     run_id, std::string(outcome));
    });
  };
  const auto duration = chance() < b.hang_rate ? b.hang : b.work;
  const auto until = std::chrono::steady_clock::now() + duration;
  while (std::chrono::steady_clock::now() < until) {
    if (ctx.stop_requested()) {
      finish("stopped");
      throw std::runtime_error("stopped");
    }
    std::this_thread::sleep_for(std::min<std::chrono::milliseconds>(duration, std::chrono::milliseconds(5)));
  }
  if (b.terminal_every > 0 && seq % b.terminal_every == 0) {
    finish("terminal");
    throw dmm::TerminalError("seq " + std::to_string(seq) + " is terminal by design");
  }
  if (chance() < b.fail_rate) {
    finish("failed");
    throw std::runtime_error("random failure by design");
  }
  finish("done");
  return dmm::Result::done();
}

}  // namespace dmm_faults
