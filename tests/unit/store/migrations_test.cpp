// The migrations embedded at build time, and their checksums.
#include "store/migrations.hpp"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cctype>
#include <regex>
#include <string>

using dmm::detail::embedded_migrations;
using dmm::detail::migration_checksum;

namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

}  // namespace

TEST_CASE("migrations are embedded", "[migrations]") {
  auto migrations = embedded_migrations();
  REQUIRE_FALSE(migrations.empty());
  CHECK(std::string(migrations[0].name) == "0001_init.sql");
  CHECK_THAT(migrations[0].sql, Catch::Contains("CREATE TABLE dmm.matter"));
  for (const auto& m : migrations) {
    INFO(m.name);
    CHECK(m.sql != nullptr);
    CHECK(std::string(m.sql).size() > 0);
  }
}

TEST_CASE("migration versions increase strictly from 1 and match their file names", "[migrations]") {
  const std::regex file_name(R"((\d{4})_[A-Za-z0-9_-]+\.sql)");
  int previous = 0;
  for (const auto& m : embedded_migrations()) {
    INFO(m.name);
    std::cmatch match;
    REQUIRE(std::regex_match(m.name, match, file_name));
    CHECK(std::stoi(match[1].str()) == m.version);
    CHECK(m.version == previous + 1);  // append-only, no gaps
    previous = m.version;
  }
  CHECK(previous >= 1);
}

TEST_CASE("a migration checksum is 16 hex digits of FNV-1a 64", "[migrations]") {
  const std::regex hex16("[0-9a-fA-F]{16}");
  for (const auto& m : embedded_migrations()) CHECK(std::regex_match(migration_checksum(m.sql), hex16));
  // Published FNV-1a 64 test vectors.
  CHECK(lower(migration_checksum("")) == "cbf29ce484222325");
  CHECK(lower(migration_checksum("a")) == "af63dc4c8601ec8c");
  CHECK(lower(migration_checksum("foobar")) == "85944171f73967e8");
}

TEST_CASE("a migration checksum is stable and changes with any byte", "[migrations]") {
  std::string sql = embedded_migrations()[0].sql;
  CHECK(migration_checksum(sql) == migration_checksum(std::string(sql)));
  for (std::size_t at : {std::size_t{0}, sql.size() / 2, sql.size() - 1}) {
    std::string edited = sql;
    edited[at] = static_cast<char>(edited[at] ^ 1);
    CHECK(migration_checksum(edited) != migration_checksum(sql));
  }
  CHECK(migration_checksum(sql + " ") != migration_checksum(sql));
}
