// Configuration the way PostgreSQL tools take it: an empty PostgreSQL URL
// means libpq's own PG* variables (BucketOptions::postgres), and
// BucketOptions::from_env reads the DMM_ variables, on real servers.
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <regex>

#include "harness.hpp"
#include "scoped_env.hpp"

using namespace dmm_test;

namespace {

struct Lamp {
  std::string room;
  bool on = false;
  std::string identity() const { return room; }
  dmm::Result materialize(dmm::Context&) { return dmm::Result::done(); }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Lamp, room, on)


void converges(dmm::Bucket& bucket, const std::string& name) {
  bucket.register_kind<Lamp>("lamp", fast_kind());
  Runner runner(bucket);
  bucket.notify(Lamp{.room = "hall", .on = true});
  wait_until([&] { return count_converged(name, "lamp") == 1; }, 15s, "the lamp to converge",
             [&] { return describe_unconverged(name); });
}

}  // namespace

TEST_CASE("with an empty PostgreSQL URL a bucket connects by libpq's PG* variables", "[config]") {
  // postgresql://user@host:port/db, as scripts/dev-env writes it.
  std::smatch m;
  const std::string url = servers().postgres;
  const std::regex form(R"(postgres(?:ql)?://([^@:/]+)@([^:/]+):(\d+)/([^?]+).*)");
  REQUIRE(std::regex_match(url, m, form));
  ScopedEnv env;
  env.set("PGUSER", m[1]).set("PGHOST", m[2]).set("PGPORT", m[3]).set("PGDATABASE", m[4]);
  if (url.find("sslmode=disable") != std::string::npos) env.set("PGSSLMODE", "disable");
  const auto name = unique_name("pgenv");
  auto bucket = open_bucket(name, [](dmm::BucketOptions& o) { o.postgres.clear(); });
  converges(bucket, name);
}

TEST_CASE("with an empty PostgreSQL URL the password comes from libpq's password file", "[config]") {
  // scripts/dev-env's pg_hba.conf asks the role dmm_pw for its password
  // (scram-sha-256) over TCP; the password is security_test's, so the two
  // tests may run at once.
  const std::string password = "pg-Secret-71q", wrong = "Wrong-pgpass-Pass-88";
  {
    pqxx::nontransaction tx(pg());
    tx.exec("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'dmm_pw') THEN "
            "CREATE ROLE dmm_pw LOGIN SUPERUSER; END IF; END $$");
    tx.exec("ALTER ROLE dmm_pw PASSWORD " + tx.quote(password));
  }
  std::smatch m;
  const std::string url = servers().postgres;
  REQUIRE(std::regex_match(url, m, std::regex(R"(postgres(?:ql)?://[^@]+@([^:/]+):(\d+)/([^?]+).*)")));
  const std::string host = m[1], port = m[2], db = m[3];
  const auto home = std::filesystem::temp_directory_path() / unique_name("pghome");
  std::filesystem::create_directories(home);
  const auto pgpass = home / ".pgpass";
  // libpq ignores a password file that others may read.
  const auto write_pgpass = [&](const std::string& pw) {
    std::ofstream(pgpass) << host << ':' << port << ':' << db << ":dmm_pw:" << pw << '\n';
    REQUIRE(::chmod(pgpass.c_str(), 0600) == 0);
  };
  ScopedEnv env;
  env.set("HOME", home.string()).set("PGPASSFILE", pgpass.string()).unset("PGPASSWORD").unset("PGSERVICE");
  env.set("PGHOST", "127.0.0.1").set("PGPORT", port).set("PGUSER", "dmm_pw").set("PGDATABASE", db);
  if (url.find("sslmode=disable") != std::string::npos) env.set("PGSSLMODE", "disable");

  write_pgpass(password);
  const auto name = unique_name("pgpass");
  {
    auto bucket = open_bucket(name, [](dmm::BucketOptions& o) { o.postgres.clear(); });
    converges(bucket, name);
    pqxx::connection check("");  // the same libpq defaults: logged in as dmm_pw
    CHECK(pqxx::nontransaction(check).exec1("SELECT current_user")[0].as<std::string>() == "dmm_pw");
  }

  write_pgpass(wrong);
  try {
    open_bucket(name, [](dmm::BucketOptions& o) { o.postgres.clear(); });
    FAIL("Bucket::open succeeded with a wrong password in the password file");
  } catch (const dmm::ConnectionError& e) {
    const std::string what = e.what();
    CHECK_THAT(what, Catch::Contains("password authentication failed for user \"dmm_pw\""));
    CHECK_THAT(what, Catch::Contains("libpq's defaults (PGHOST, PGPORT, PGUSER, PGDATABASE, ~/.pgpass"));
    CHECK(what.find(wrong) == std::string::npos);
    CHECK(what.find(password) == std::string::npos);
  }
  std::filesystem::remove_all(home);
}

TEST_CASE("an empty PostgreSQL URL with nothing for libpq to go on names the libpq defaults", "[config]") {
  ScopedEnv env;
  env.set("PGHOST", "127.0.0.1").set("PGPORT", std::to_string(closed_port())).set("PGCONNECT_TIMEOUT", "2");
  try {
    open_bucket(unique_name("pgenv-bad"), [](dmm::BucketOptions& o) { o.postgres.clear(); });
    FAIL("Bucket::open succeeded against a closed port");
  } catch (const dmm::ConnectionError& e) {
    CHECK_THAT(e.what(), Catch::Contains("libpq's defaults (PGHOST, PGPORT"));
  }
}

TEST_CASE("a bucket opened with BucketOptions::from_env works", "[config]") {
  const auto name = unique_name("fromenv");
  ScopedEnv env;
  env.set("DMM_BUCKET", name)
      .set("DMM_POSTGRES_URL", servers().postgres)
      .set("DMM_NATS_URL", servers().nats)
      .set("DMM_TOKEN_GRACE", "500ms");
  auto options = dmm::BucketOptions::from_env();
  options.logger = test_logger();
  auto bucket = dmm::Bucket::open(options);
  CHECK(bucket.name() == name);
  converges(bucket, name);
}
