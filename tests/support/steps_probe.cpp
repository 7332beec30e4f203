#include "steps_probe.hpp"

#include <thread>

namespace dmm_test {

void ensure_step_runs_table(pqxx::connection& conn) {
  pqxx::work tx(conn);
  tx.exec("SELECT pg_advisory_xact_lock(727275)");
  tx.exec("CREATE SCHEMA IF NOT EXISTS dmm_test");
  tx.exec(
      "CREATE TABLE IF NOT EXISTS dmm_test.step_runs (run_id bigserial PRIMARY KEY, bucket text NOT NULL, "
      "identity text NOT NULL, generation bigint NOT NULL, step integer NOT NULL, "
      "started timestamptz NOT NULL DEFAULT clock_timestamp())");
  tx.exec("CREATE INDEX IF NOT EXISTS step_runs_bucket ON dmm_test.step_runs (bucket, identity)");
  tx.commit();
}

dmm::Result StepsProbe::materialize(dmm::Context& ctx) {
  auto& env = ctx.service<StepsEnv>();
  thread_local std::unique_ptr<pqxx::connection> conn;
  if (!conn || !conn->is_open()) conn = std::make_unique<pqxx::connection>(env.postgres);
  auto record = [&](int step) {
    pqxx::nontransaction tx(*conn);
    tx.exec_params("INSERT INTO dmm_test.step_runs (bucket, identity, generation, step) VALUES ($1, $2, $3, $4)",
                   env.bucket, id, ctx.generation(), step);
    if (env.work.count() > 0) std::this_thread::sleep_for(env.work);
  };
  dmm::Steps steps(ctx, *this, progress);
  for (int i = 1; i <= kProbeSteps; ++i) steps.step("step-" + std::to_string(i), [&record, i] { record(i); });
  return steps.run();
}

}  // namespace dmm_test
