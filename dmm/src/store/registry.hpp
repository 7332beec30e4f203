// dmm.kind, the registry of kinds (migration 0009): what the SQL API
// (dmm.notify, dmm.remove; docs/SQL.md) knows of the kinds processes have
// registered.
#pragma once

#include <cstdint>
#include <pqxx/pqxx>
#include <string>

namespace dmm::detail {

// A kind as a process registered it: the limits and hooks the SQL side
// cannot learn from C++.
struct KindRecord {
  std::string bucket;
  std::string kind;
  std::int64_t max_state_bytes = 0;  // BucketOptions::max_state_bytes
  bool has_finalize = false;         // dmm.remove marks it deleting, else deletes
  bool has_dependencies = false;     // dmm.notify refuses it (no edges from SQL)
  bool fair = false;                 // dmm.notify requires a fair_key
  std::string registered_by;         // the worker id
};

// Writes (upserts) the row of `record.kind`: the latest registration wins.
void record_kind(pqxx::connection& conn, const KindRecord& record);

}  // namespace dmm::detail
