// Probe: the materializer the multi-process tests run in dmm_test_worker. Each
// run is recorded in dmm_test.runs (identity, worker, seq, started, finished)
// with the database clock, so tests can check in SQL that no two runs of one
// identity overlapped and that the last run saw the last state.
#pragma once

#include <chrono>
#include <nlohmann/json.hpp>
#include <pqxx/pqxx>
#include <string>

#include "dmm/dmm.hpp"

namespace dmm_test {

// Given to the bucket with provide(): where to record runs and how to behave.
struct ProbeEnv {
  std::string postgres;
  std::string worker;
  std::chrono::milliseconds sleep{0};
};

struct Probe {
  std::string id;
  long seq = 0;
  int fail_times = 0;

  std::string identity() const { return id; }
  // Sleeps ProbeEnv::sleep (aborting by throwing when the stop token fires),
  // throws while ctx.attempt() <= fail_times, and records the run either way.
  dmm::Result materialize(dmm::Context& ctx);
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Probe, id, seq, fail_times)

// Creates schema dmm_test and table dmm_test.runs if missing (safe to race).
void ensure_runs_table(pqxx::connection& conn);

}  // namespace dmm_test
