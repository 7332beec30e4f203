// StepsProbe: an action of five recorded steps (dmm::Steps), for the
// multi-process steps test and the test worker (--type steps). Each step's
// start is recorded durably in dmm_test.step_runs before its work, so a test
// can prove in SQL that no completed step ran again: per action and
// generation, the step numbers in start order never go down (a step may
// start twice only if it was running when its process died).
#pragma once

#include <chrono>
#include <nlohmann/json.hpp>
#include <pqxx/pqxx>
#include <string>

#include "dmm/dmm.hpp"
#include "dmm/steps.hpp"

namespace dmm_test {

// Given to the bucket with provide() (ProbeEnv's postgres and bucket).
struct StepsEnv {
  std::string postgres;
  std::string bucket;
  std::chrono::milliseconds work{0};  // time spent in each step
};

struct StepsProbe {
  std::string id;
  long seq = 0;
  dmm::StepProgress progress{};

  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context& ctx);
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(StepsProbe, id, seq, progress)

inline constexpr int kProbeSteps = 5;

// Creates dmm_test.step_runs if missing (safe to race).
void ensure_step_runs_table(pqxx::connection& conn);

}  // namespace dmm_test
