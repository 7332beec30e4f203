// dmm behind PgBouncer (scripts/dev-env up --pooler): the ctest entry
// integration-pooler runs these and other groups with the test PostgreSQL URL
// pointing at PgBouncer in session mode; a bucket opened through transaction
// mode is refused (docs/OPERATIONS.md, "Connection poolers").
#include <algorithm>
#include <catch2/catch.hpp>

#include "harness.hpp"

using namespace dmm_test;

namespace {

std::string pooler_url(const char* test_name, const char* env_name) {
  const char* v = std::getenv(test_name);
  if (!v || !*v) v = std::getenv(env_name);
  if (!v || !*v)
    FAIL(test_name << " (or " << env_name
                   << ") is not set: start the servers with `scripts/dev-env up --pooler` and source its env file");
  return v;
}

struct Lamp {
  std::string room;
  bool on = false;
  std::string identity() const { return room; }
  dmm::Result materialize(dmm::Context&) { return dmm::Result::done(); }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Lamp, room, on)

}  // namespace

TEST_CASE("the test PostgreSQL of this group is reached through a pooler", "[pooler]") {
  // PgBouncer answers the client with a cancel key of its own, so the backend
  // pid libpq was told differs from the server's.
  auto conn = connect_pg(servers().postgres);
  pqxx::nontransaction tx(conn);
  const auto server_pid = tx.exec("SELECT pg_backend_pid()")[0][0].as<int>();
  INFO("DMM_TEST_POSTGRES_URL must be scripts/dev-env's DMM_POOLER_URL for the [pooler] group");
  CHECK(conn.backendpid() != server_pid);
}

TEST_CASE("through a session pooler a bucket works, and its wakeup NOTIFY reaches a LISTEN", "[pooler]") {
  const auto url = pooler_url("DMM_TEST_POOLER_URL", "DMM_POOLER_URL");
  const auto name = unique_name("pool");
  auto bucket = open_bucket(name, [&](dmm::BucketOptions& o) { o.postgres = url; });
  bucket.register_kind<Lamp>("lamp", fast_kind());
  Runner runner(bucket);
  // What the sweepers do on their own connections (engine/sweeper.cpp).
  struct Wake : pqxx::notification_receiver {
    std::vector<std::string> payloads;
    explicit Wake(pqxx::connection_base& c) : pqxx::notification_receiver(c, "dmm_wake") {}
    void operator()(const std::string& payload, int) override { payloads.push_back(payload); }
  };
  auto listener = connect_pg(url);
  Wake wake(listener);
  {
    auto conn = connect_pg(url);
    pqxx::work txn(conn);
    bucket.notify(txn, Lamp{.room = "hall", .on = true});
    txn.commit();
  }
  wait_until(
      [&] {
        listener.await_notification(0, 20000);
        return std::find(wake.payloads.begin(), wake.payloads.end(), name) != wake.payloads.end();
      },
      10s, "the wakeup NOTIFY of a transactional notify");
  wait_until([&] { return count_converged(name, "lamp") == 1; }, 15s, "the lamp to converge",
             [&] { return describe_unconverged(name); });
}

TEST_CASE("a bucket opened through a transaction pooler is refused, naming pool_mode and the fix", "[pooler]") {
  const auto url = pooler_url("DMM_TEST_POOLER_TRANSACTION_URL", "DMM_POOLER_TRANSACTION_URL");
  const auto name = unique_name("pooltx");
  try {
    auto bucket = open_bucket(name, [&](dmm::BucketOptions& o) { o.postgres = url; });
    FAIL("Bucket::open accepted " << url << ", a PgBouncer in transaction mode");
  } catch (const dmm::ConnectionError& e) {
    const std::string what = e.what();
    INFO(what);
    CHECK(what.find("bucket '" + name + "'") != std::string::npos);
    CHECK(what.find(url) != std::string::npos);
    CHECK(what.find("in transaction mode") != std::string::npos);
    CHECK(what.find("pool_mode = session") != std::string::npos);
    CHECK(what.find("Connection poolers") != std::string::npos);
  }
}

TEST_CASE("notify(txn, obj) on an application's own connection works through a transaction pooler", "[pooler]") {
  // Only the bucket's own connections need a session: the caller's
  // transaction runs unnamed statements and a NOTIFY sent at its commit.
  const auto name = unique_name("pooltxn");
  auto bucket = open_bucket(name);  // directly, or through the session pooler
  bucket.register_kind<Lamp>("lamp", fast_kind());
  Runner runner(bucket);
  auto conn = connect_pg(pooler_url("DMM_TEST_POOLER_TRANSACTION_URL", "DMM_POOLER_TRANSACTION_URL"));
  for (const char* room : {"hall", "porch", "attic"}) {
    pqxx::work txn(conn);
    bucket.notify(txn, Lamp{.room = room, .on = true});
    txn.commit();
  }
  wait_until([&] { return count_converged(name, "lamp") == 3; }, 15s, "the lamps to converge",
             [&] { return describe_unconverged(name); });
}
