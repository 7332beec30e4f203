// Schema migrations: SQL files in migrations/ (NNNN_name.sql, append-only),
// embedded at build time. Bucket::open applies them; tools may too.
#pragma once

#include <string>
#include <vector>

namespace dmm {

struct MigrationInfo {
  int version = 0;
  std::string name;      // file name, e.g. "0001_init.sql"
  std::string checksum;  // of the embedded SQL
  bool applied = false;
  std::string applied_at;  // empty when not applied
};

// Applies missing migrations under an advisory lock, in one transaction.
// MigrationError if an applied migration's checksum differs from the embedded
// one (the file was edited after it was applied). Returns how many were applied.
int migrate(const std::string& postgres_url);

// Embedded migrations and whether each is applied.
std::vector<MigrationInfo> migration_status(const std::string& postgres_url);

}  // namespace dmm
