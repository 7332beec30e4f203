// Applying the embedded migrations: under an advisory lock, in one
// transaction, refusing to start when an applied migration was edited.
#include "store/migrations.hpp"

#include <fmt/format.h>
#include <map>
#include <pqxx/pqxx>

#include "dmm/errors.hpp"
#include "dmm/migrate.hpp"
#include "dmm/url.hpp"
#include "store/pg.hpp"

namespace dmm {
namespace detail {

std::string migration_checksum(std::string_view sql) {
  std::uint64_t hash = 0xcbf29ce484222325ULL;
  for (unsigned char c : sql) {
    hash ^= c;
    hash *= 0x100000001b3ULL;
  }
  return fmt::format("{:016x}", hash);
}

namespace {

// Any fixed number: serializes migrating processes across the database.
constexpr std::int64_t kMigrationLock = 0x646d6d5f6d6967;  // "dmm_mig"

struct Applied {
  std::string name;
  std::string checksum;
  std::string applied_at;
};

std::map<int, Applied> read_applied(pqxx::transaction_base& tx) {
  std::map<int, Applied> applied;
  auto exists = tx.exec("SELECT to_regclass('dmm.schema_migrations') IS NOT NULL");
  if (!exists[0][0].as<bool>()) return applied;
  for (const auto& row : tx.exec("SELECT version, name, checksum, applied_at::text FROM dmm.schema_migrations"))
    applied[row[0].as<int>()] = {row[1].as<std::string>(), row[2].as<std::string>(), row[3].as<std::string>()};
  return applied;
}

void check_applied(const std::map<int, Applied>& applied) {
  for (const auto& m : embedded_migrations()) {
    auto it = applied.find(m.version);
    if (it == applied.end()) continue;
    const auto sum = migration_checksum(m.sql);
    if (it->second.checksum != sum)
      throw MigrationError(fmt::format(
          "migration {} was changed after it was applied (checksum in dmm.schema_migrations {}, in this build {}): "
          "migrations are append-only — restore the original file and put the change in a new migration",
          m.name, it->second.checksum, sum));
  }
}

pqxx::connection connect(const std::string& url) {
  try {
    return pqxx::connection(url);
  } catch (const std::exception& e) {
    throw ConnectionError(fmt::format("cannot connect to PostgreSQL at {} (for migrations): {}", shown_postgres(url),
                                      mask_url(e.what())));
  }
}

}  // namespace
}  // namespace detail

int migrate(const std::string& postgres_url) {
  using namespace detail;
  auto conn = connect(postgres_url);
  pqxx::work tx(conn);
  tx.exec("SET LOCAL client_min_messages = warning");
  tx.exec(fmt::format("SELECT pg_advisory_xact_lock({})", kMigrationLock));
  tx.exec("CREATE SCHEMA IF NOT EXISTS dmm");
  tx.exec(
      "CREATE TABLE IF NOT EXISTS dmm.schema_migrations (version integer PRIMARY KEY, name text NOT NULL, "
      "checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())");
  const auto applied = read_applied(tx);
  check_applied(applied);
  int count = 0;
  for (const auto& m : embedded_migrations()) {
    if (applied.count(m.version)) continue;
    try {
      tx.exec(m.sql);
    } catch (const pqxx::sql_error& e) {
      throw MigrationError(fmt::format("migration {} failed: {}", m.name, e.what()));
    }
    tx.exec_params("INSERT INTO dmm.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)", m.version,
                   std::string(m.name), migration_checksum(m.sql));
    ++count;
  }
  tx.commit();
  return count;
}

std::vector<MigrationInfo> migration_status(const std::string& postgres_url) {
  using namespace detail;
  auto conn = connect(postgres_url);
  pqxx::read_transaction tx(conn);
  const auto applied = read_applied(tx);
  std::vector<MigrationInfo> out;
  for (const auto& m : embedded_migrations()) {
    MigrationInfo info{m.version, m.name, migration_checksum(m.sql), false, ""};
    if (auto it = applied.find(m.version); it != applied.end()) {
      info.applied = true;
      info.applied_at = it->second.applied_at;
    }
    out.push_back(std::move(info));
  }
  return out;
}

}  // namespace dmm
