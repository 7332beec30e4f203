// Read-only views of stored matters, for debugging tools ("why is this matter
// not ready?"). Needs only PostgreSQL and no knowledge of the user's types.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace dmm {

struct MatterStatus {
  std::int64_t id = 0;
  std::string kind;
  std::string identity;
  std::string phase;  // pending, reconciling, retrying, ready, deleting, failed
  std::int64_t generation = 0;
  std::int64_t materialized_generation = 0;
  int attempts = 0;
  std::string last_error;   // empty when none
  std::string due_at;       // ISO time when work is next owed; empty when none
  std::string lease_owner;  // empty when not leased (or the lease expired)
  std::string lease_until;
  std::string updated_at;
  std::string state;  // JSON text
};

struct InspectQuery {
  std::string postgres{};  // PostgreSQL URL
  std::string bucket{};
  std::optional<std::string> kind{};
  std::optional<std::string> identity{};
  int limit = 1000;
};

// Matters of the bucket, ordered by kind and identity.
std::vector<MatterStatus> inspect(const InspectQuery& query);

// One plain sentence on why the matter is (not) ready.
std::string explain(const MatterStatus& matter);

}  // namespace dmm
