// The Probe materializer (see probe.hpp).
#include "probe.hpp"

#include <memory>
#include <random>
#include <stdexcept>
#include <thread>

namespace dmm_test {
namespace {

// pqxx connections are not thread-safe: one per executor thread, reopened
// after PostgreSQL restarts.
pqxx::connection& thread_connection(const std::string& url) {
  thread_local std::unique_ptr<pqxx::connection> conn;
  thread_local std::string conn_url;
  if (!conn || !conn->is_open() || conn_url != url) {
    conn = std::make_unique<pqxx::connection>(url);
    conn_url = url;
  }
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

void ensure_runs_table(pqxx::connection& conn) {
  pqxx::work tx(conn);
  // Concurrent CREATE ... IF NOT EXISTS can still collide: serialize them.
  tx.exec("SELECT pg_advisory_xact_lock(727274)");
  tx.exec("CREATE SCHEMA IF NOT EXISTS dmm_test");
  // A table of the layout before the fault suite shared it holds only test
  // data.
  if (tx.exec("SELECT 1 FROM information_schema.columns WHERE table_schema = "
              "'dmm_test' AND table_name = 'runs' "
              "AND column_name = 'outcome'")
          .empty())
    tx.exec("DROP TABLE IF EXISTS dmm_test.runs");
  tx.exec(
      "CREATE TABLE IF NOT EXISTS dmm_test.runs (run_id bigserial PRIMARY "
      "KEY, bucket text NOT NULL, "
      "identity text NOT NULL, worker text NOT NULL, seq bigint NOT NULL, "
      "started timestamptz NOT NULL, "
      "finished timestamptz, outcome text)");
  tx.exec(
      "CREATE INDEX IF NOT EXISTS runs_bucket_identity ON dmm_test.runs "
      "(bucket, identity)");
  // When the run's lease was taken (dmm.matter.leased_at): a rate limit
  // counts a start at its lease.
  tx.exec("ALTER TABLE dmm_test.runs ADD COLUMN IF NOT EXISTS leased timestamptz");
  tx.commit();
}

dmm::Result Probe::materialize(dmm::Context& ctx) {
  const auto& env = ctx.service<ProbeEnv>();
  // The run's id comes first, so a start whose INSERT committed just before
  // the connection broke can still be closed below.
  const auto run_id = with_connection(env.postgres, [&](pqxx::connection& c) {
    pqxx::nontransaction tx(c);
    return tx.exec1("SELECT nextval(pg_get_serial_sequence('dmm_test.runs', 'run_id'))")[0].as<long>();
  });
  // The end is the moment the work ended (the wall clock, which is the
  // database's clock on this machine), written even if PostgreSQL is
  // restarting: a run left unfinished counts as lasting until the end of the
  // scenario, and a late write with the database clock could make a run that
  // had ended look as if it overlapped the next one.
  auto finish = [&](const char* outcome) {
    const auto ended =
        std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    for (;;) {
      try {
        with_connection(env.postgres, [&](pqxx::connection& c) {
          pqxx::nontransaction tx(c);
          tx.exec_params(
              "UPDATE dmm_test.runs SET finished = "
              "to_timestamp($3::double precision / 1e6), "
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
    with_connection(env.postgres, [&](pqxx::connection& c) {
      pqxx::nontransaction tx(c);
      tx.exec_params(
          "INSERT INTO dmm_test.runs (run_id, bucket, identity, "
          "worker, seq, started, leased) "
          "VALUES ($1, $2, $3, $4, $5, clock_timestamp(), (SELECT leased_at FROM dmm.matter "
          "WHERE bucket = $2 AND kind = $6 AND identity = $3))",
          run_id, env.bucket, id, env.worker, seq, ctx.kind());
    });
  } catch (const std::exception&) {
    finish("unrecorded");  // a no-op unless the INSERT committed after all
    throw;
  }
  const auto duration = env.hang_rate > 0 && chance() < env.hang_rate ? env.hang : env.work;
  const auto until = std::chrono::steady_clock::now() + duration;
  while (std::chrono::steady_clock::now() < until) {
    if (!env.ignore_stop && ctx.stop_requested()) {
      finish("stopped");
      throw std::runtime_error("probe " + id + ": stopped");
    }
    std::this_thread::sleep_for(std::min<std::chrono::milliseconds>(duration, std::chrono::milliseconds(5)));
  }
  if (ctx.attempt() <= fail_times) {
    finish("failed");
    throw std::runtime_error("probe " + id + ": planned failure " + std::to_string(ctx.attempt()));
  }
  if (env.terminal_every > 0 && seq % env.terminal_every == 0) {
    finish("terminal");
    throw dmm::TerminalError("probe " + id + ": seq " + std::to_string(seq) + " is terminal by design");
  }
  if (env.fail_rate > 0 && chance() < env.fail_rate) {
    finish("failed");
    throw std::runtime_error("probe " + id + ": random failure by design");
  }
  finish("done");
  return dmm::Result::done();
}

}  // namespace dmm_test
