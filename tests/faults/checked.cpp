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
  // The run's id comes first, so a start whose INSERT committed just before
  // the connection broke can still be closed below.
  const auto run_id = with_connection(b.postgres, [&](pqxx::connection& c) {
    pqxx::nontransaction tx(c);
    return tx.exec1("SELECT nextval(pg_get_serial_sequence('dmm_faults.runs', 'run_id'))")[0].as<long>();
  });
  // The end is the moment the work ended (the wall clock, which is the
  // database's clock on this machine), written even if PostgreSQL is
  // restarting: a run left unfinished counts as lasting until the end of the
  // scenario, and a late write with the database clock could make a run that
  // had ended look as if it overlapped the next one.
  auto finish = [&](const char* outcome) {
    const auto ended = std::chrono::duration_cast<std::chrono::microseconds>(
                           std::chrono::system_clock::now().time_since_epoch())
                           .count();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    for (;;) {
      try {
        with_connection(b.postgres, [&](pqxx::connection& c) {
          pqxx::nontransaction tx(c);
          tx.exec_params("UPDATE dmm_faults.runs SET finished = to_timestamp($3::double precision / 1e6), "
                         "outcome = $2 WHERE run_id = $1",
                         run_id, std::string(outcome), std::to_string(ended));
        });
        return;
      } catch (const std::exception&) {
        if (std::chrono::steady_clock::now() > deadline) throw;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    }
  };
  // The start is recorded durably before anything else: a run that cannot
  // be recorded does not happen.
  try {
    with_connection(b.postgres, [&](pqxx::connection& c) {
      pqxx::nontransaction tx(c);
      tx.exec_params("INSERT INTO dmm_faults.runs (run_id, bucket, identity, worker, seq, started) "
                     "VALUES ($1, $2, $3, $4, $5, clock_timestamp())",
                     run_id, b.bucket, id, b.worker, seq);
    });
  } catch (const std::exception&) {
    finish("unrecorded");  // a no-op unless the INSERT committed after all
    throw;
  }
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
