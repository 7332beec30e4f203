// The migrations embedded at build time (generated from migrations/*.sql).
#pragma once

#include <span>
#include <string>
#include <string_view>

namespace dmm::detail {

struct EmbeddedMigration {
  int version;
  const char* name;  // file name
  const char* sql;
};

// In version order.
std::span<const EmbeddedMigration> embedded_migrations();

// Checksum recorded for a migration: FNV-1a 64 of its SQL, as 16 hex digits.
std::string migration_checksum(std::string_view sql);

}  // namespace dmm::detail
