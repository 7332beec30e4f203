// Dependency edges between matters (dmm.dependency): stored with a
// dependent's notify, checked for cycles, read at removal.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <pqxx/pqxx>
#include <string>
#include <string_view>
#include <vector>

#include "dmm/dependency.hpp"

namespace dmm::detail {

// The dependencies a notified matter declares (dmm/dependency.hpp).
struct MatterDependencies {
  std::string identity;
  std::vector<Dependency> dependencies;
};

// Replaces the stored dependency edges of `matters` (all of one kind) with
// theirs. Returns a cycle through one of them ("kind identity" per step, the
// first repeated at the end) if the new edges close one: the caller must then
// roll back.
std::optional<std::vector<std::string>> store_dependencies(pqxx::transaction_base& txn, const std::string& bucket,
                                                          const std::string& kind,
                                                          const std::vector<MatterDependencies>& matters);

// Up to `limit` live (not being removed) matters that depend on this one.
std::vector<Dependency> dependents_of(pqxx::transaction_base& txn, const std::string& bucket, const std::string& kind,
                                      std::string_view identity, int limit);

// Deletes the dependency edges of a matter that is gone.
void delete_dependencies(pqxx::transaction_base& txn, const std::string& bucket, const std::string& kind,
                         std::string_view identity);
}  // namespace dmm::detail
