// The attempt history across a crash of PostgreSQL (immediate shutdown, then
// recovery): dmm.attempt is WAL-logged (migration 0010), so what was recorded
// before the crash is still there after it (docs/DESIGN.md, "Attempt history").
#include <catch2/catch.hpp>
#include <cstdlib>

#include "harness.hpp"

using namespace dmm_test;

namespace {

struct Lamp {
  std::string room;
  long seq = 0;
  std::string identity() const { return room; }
  dmm::Result materialize(dmm::Context& ctx) {
    if (ctx.attempt() == 1) throw std::runtime_error("bulb still warm");  // two attempts in the history
    return dmm::Result::done();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Lamp, room, seq)

std::string required_env(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) FAIL(name << " is not set: the crash test restarts PostgreSQL with scripts/dev-env (scripts/test sets it)");
  return v;
}

// (matter identity, attempt, outcome) of the bucket's history, in order.
std::vector<std::string> history(const std::string& bucket) {
  auto conn = connect_pg(servers().postgres);  // a fresh one: the crash broke the older ones
  pqxx::nontransaction tx(conn);
  std::vector<std::string> out;
  for (const auto& row : tx.exec_params("SELECT m.identity || ' ' || a.attempt || ' ' || a.outcome FROM dmm.attempt a "
                                        "JOIN dmm.matter m ON m.id = a.matter_id WHERE a.bucket = $1 "
                                        "ORDER BY m.identity, a.seq",
                                        bucket))
    out.push_back(row[0].as<std::string>());
  return out;
}

}  // namespace

TEST_CASE("the attempt history recorded before a PostgreSQL crash is still there after recovery", "[history]") {
  const auto dev_env = required_env("DMM_TEST_DEV_ENV");
  const auto env_dir = required_env("DMM_TEST_ENV_DIR");
  const auto name = unique_name("crash");
  auto bucket = open_bucket(name);
  bucket.register_kind<Lamp>("lamp", fast_kind());
  Runner runner(bucket);
  for (const char* room : {"hall", "porch", "attic"}) bucket.notify(Lamp{.room = room, .seq = 1});
  wait_until([&] { return count_converged(name, "lamp") == 3; }, 20s, "the lamps to converge",
             [&] { return describe_unconverged(name); });
  const auto before = history(name);
  REQUIRE(before.size() == 6);  // per lamp: attempt 1 retry, attempt 2 done
  CHECK(before[0] == "attic 1 retry");
  CHECK(before[1] == "attic 2 done");

  // A crash: no checkpoint, recovery replays the WAL.
  const auto cmd = dev_env + " restart-pg immediate --dir '" + env_dir + "' >/dev/null 2>&1";
  REQUIRE(std::system(cmd.c_str()) == 0);

  try {  // the harness's own connection notices the crash, and reconnects next time
    pqxx::nontransaction(pg()).exec("SELECT 1");
  } catch (const pqxx::broken_connection&) {
  }
  CHECK(history(name) == before);
  CHECK(count_converged(name, "lamp") == 3);
  // The workers reconnect, and new attempts join the kept ones. A notify on
  // a pooled connection from before the crash may fail, saying to repeat it.
  wait_until(
      [&] {
        try {
          bucket.notify(Lamp{.room = "hall", .seq = 2});
          return true;
        } catch (const dmm::ConnectionError&) {
          return false;
        }
      },
      30s, "a notify to succeed after the crash");
  wait_until([&] { return history(name).size() == 8; }, 30s, "two more attempts of the hall lamp");
  auto after = history(name);
  CHECK(std::vector<std::string>(after.begin() + 2, after.begin() + 6) ==
        std::vector<std::string>{"hall 1 retry", "hall 2 done", "hall 1 retry", "hall 2 done"});
}
