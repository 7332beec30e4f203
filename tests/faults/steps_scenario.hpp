// The fault suite's `steps` scenario (docs/DESIGN.md "Steps", RELIABILITY.md):
// matters that are actions of five steps (dmm::Steps), some with injected
// failures, worked by `fault_worker --type steps` under SIGKILLs and a
// PostgreSQL restart. Every step and rollback writes a row of a durable run
// log (dmm_test.step_log) before and after its work, each row committed on
// its own and carrying the step statuses PostgreSQL held for the action at
// that moment; the checker proves from it, and from the stored matters, that
// no completed step or rollback ran again for its generation, that rollbacks
// ran newest first, and that each action ended as its injected failures say.
#pragma once

#include <map>
#include <memory>
#include <pqxx/pqxx>
#include <string>
#include <vector>

#include "dmm/dmm.hpp"
#include "dmm/steps.hpp"
#include "probe.hpp"

namespace fault_steps {

inline constexpr int kSteps = 5;
inline constexpr const char* kKind = "steps";

// The state of one action: the driver's Probe (id, seq) plus the failures it
// injects, chosen from id and seq (plan_of), and the action's progress.
//   clean      every step succeeds
//   transient  step `fail_step` (3 or 4, max_attempts 3) fails twice, then
//   succeeds exhausted  step `fail_step` (3 or 4) always fails: given up after
//   3 attempts terminal   step `fail_step` (2..5) throws a TerminalError
// With a failing plan, the rollback of step `undo_fail_step` (0: none) fails
// once, then succeeds. Its attempt counts are the stored ones (the progress),
// so a kill does not change how often a step fails.
struct Action {
  std::string id;
  long seq = 0;
  std::string plan = "clean";
  int fail_step = 0;
  int undo_fail_step = 0;
  dmm::StepProgress progress{};

  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context& ctx);
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Action, id, seq, plan, fail_step, undo_fail_step, progress)

// The action the driver notifies for state (id, seq).
Action action_of(const std::string& id, long seq);

// Given to the worker's bucket with provide().
struct Env {
  std::string postgres;
  std::string bucket;
  std::string worker;
  std::chrono::milliseconds work{0};  // time spent in each step
};

// Creates dmm_test.step_log (and dmm_test.runs) if missing.
void ensure_tables(pqxx::connection& conn);

// The driver's side: register the kind, notify actions for Probe states.
void register_kind(dmm::Bucket& bucket);
void notify_many(dmm::Bucket& bucket, const std::vector<dmm_test::Probe>& states);
void notify(dmm::Bucket& bucket, const dmm_test::Probe& state);

// A matter at rest as its plan says (SQL on dmm.matter): ready at its
// generation, or failed if its plan fails for good.
inline constexpr const char* kSettled =
    "CASE WHEN state->>'plan' IN ('terminal', 'exhausted') THEN phase = "
    "'failed' "
    "ELSE phase = 'ready' AND generation = materialized_generation END";

// Checks the run log and the stored actions of `bucket` once every worker
// stopped; prints one line of figures and one line per kind of violation
// (a few examples each). Returns the number of violations. `expected` is each
// identity's last notified seq (a matter not at it is the caller's "lost").
long check(pqxx::transaction_base& tx, const std::string& bucket, const std::map<std::string, long>& expected);

}  // namespace fault_steps
