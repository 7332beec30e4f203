// Checked: the materializer of the fault suite. Every notify carries a
// per-identity sequence number; every materialization records (bucket,
// identity, worker, seq seen, start, end) in dmm_faults.runs with the
// database clock, durably, before it reports success — so after a run the
// driver can prove in SQL that the last notified state of every identity was
// materialized and that no two materializations of one identity overlapped.
#pragma once

#include <chrono>
#include <nlohmann/json.hpp>
#include <pqxx/pqxx>
#include <string>

#include "dmm/dmm.hpp"

namespace dmm_faults {

// How the workers of a scenario misbehave (given with Bucket::provide).
struct Behavior {
  std::string postgres;
  std::string bucket;
  std::string worker;
  std::chrono::milliseconds work{2};     // time spent per materialization
  double fail_rate = 0;                  // chance an attempt throws (retried with backoff)
  double hang_rate = 0;                  // chance an attempt runs for `hang` (past the lease TTL)
  std::chrono::milliseconds hang{0};
  long terminal_every = 0;               // seq % terminal_every == 0 => TerminalError
};

struct Checked {
  std::string id;
  long seq = 0;

  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context& ctx);
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Checked, id, seq)

inline constexpr const char* kKind = "checked";

// Creates schema dmm_faults and its runs table if missing (safe to race).
void ensure_schema(pqxx::connection& conn);

}  // namespace dmm_faults
