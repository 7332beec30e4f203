// Probe: the recording materializer of the multi-process tests
// (dmm_test_worker) and of the fault suite (fault_worker). Every run is
// recorded in dmm_test.runs (bucket, identity, worker, seq seen, start, end,
// outcome): the start durably before the work, the end after it, so tests can
// prove in SQL that no two runs of one identity overlapped and that the last
// notified state was materialized.
#pragma once

#include <chrono>
#include <nlohmann/json.hpp>
#include <pqxx/pqxx>
#include <string>

#include "dmm/dmm.hpp"

namespace dmm_test {

// Given to the bucket with provide(): where to record runs and how the
// materializer behaves. The defaults make every run succeed at once.
struct ProbeEnv {
  std::string postgres;
  std::string bucket;                 // recorded with each run
  std::string worker;                 // recorded with each run
  std::chrono::milliseconds work{0};  // time spent per run (aborted when the stop token fires)
  double fail_rate = 0;               // chance a run throws (retried with backoff)
  double hang_rate = 0;               // chance a run lasts `hang` instead of `work` (past the lease)
  std::chrono::milliseconds hang{0};
  long terminal_every = 0;  // seq % terminal_every == 0 => TerminalError
  // Keeps working through a requested stop token, as a materializer that
  // ignores it would (the fault suite measures the overlaps that follow).
  // Otherwise a run returns within 5 ms of the request (plus recording its end).
  bool ignore_stop = false;
};

struct Probe {
  std::string id;
  long seq = 0;
  int fail_times = 0;  // the first fail_times attempts throw

  std::string identity() const { return id; }
  // Records the run's start (a run whose start cannot be recorded fails),
  // works, then records its end and outcome (done, failed, terminal,
  // stopped) before it returns or throws.
  dmm::Result materialize(dmm::Context& ctx);
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Probe, id, seq, fail_times)

// Creates schema dmm_test and table dmm_test.runs if missing (safe to race).
void ensure_runs_table(pqxx::connection& conn);

}  // namespace dmm_test
