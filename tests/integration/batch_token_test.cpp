// Tokens that name many matters: what bulk notifies, sweeps and write-backs
// publish (one NATS message per up to 64 matters instead of one per matter).
#include <atomic>
#include <thread>

#include <catch2/catch.hpp>

#include "harness.hpp"

using namespace dmm_test;

namespace {

struct Slow {
  std::string id;
  long version = 0;
  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context& ctx) {
    ctx.service<Recorder>().record(id, {.value = std::to_string(version), .attempt = ctx.attempt()});
    std::this_thread::sleep_for(std::chrono::milliseconds(2));  // the work itself, not synchronization
    return dmm::Result::done();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Slow, id, version)

std::vector<Slow> versions(int n, long version) {
  std::vector<Slow> out;
  for (int i = 0; i < n; ++i) out.push_back({.id = "m-" + std::to_string(i), .version = version});
  return out;
}

std::int64_t leased(const std::string& bucket) {
  pqxx::nontransaction tx(pg());
  return tx.exec_params1("SELECT count(*) FROM dmm.matter WHERE bucket = $1 AND lease_owner IS NOT NULL", bucket)[0]
      .as<std::int64_t>();
}

}  // namespace

TEST_CASE("a bulk notify sends one token per up to 64 matters, and the same bulk again coalesces into them",
          "[notify]") {
  const std::string name = unique_name("bulk");
  auto bucket = open_bucket(name);
  bucket.register_kind<Slow>("slow", fast_kind(8));
  auto recorder = std::make_shared<Recorder>();
  bucket.provide(recorder);

  bucket.notify_many(versions(1000, 1));
  Nats nats(servers().nats);
  const auto stream = "DMM_" + name;
  wait_until([&] { return nats.stream_messages(stream) >= 16; }, 10s, "the bulk's tokens in the stream");
  holds_for([&] { return nats.stream_messages(stream) == 16; }, 500ms, "16 tokens for 1000 matters");

  bucket.notify_many(versions(1000, 2));  // the same matters, new states: the same tokens
  holds_for([&] { return nats.stream_messages(stream) == 16; }, 500ms, "still 16 tokens");

  Runner runner(bucket);
  wait_until([&] { return count_converged(name, "slow") == 1000; }, 60s, "all 1000 matters to become ready",
             [&] { return describe_unconverged(name); });
  runner.stop();
  for (int i = 0; i < 1000; i += 111) {
    const auto id = "m-" + std::to_string(i);
    INFO(id);
    REQUIRE(recorder->count(id) >= 1);
    CHECK(recorder->entries(id).back().value == "2");
  }
}

TEST_CASE("a worker holds no more matters than its prefetch when a token names more", "[notify]") {
  const std::string name = unique_name("room");
  auto bucket = open_bucket(name);
  auto options = fast_kind(2);
  options.batch = 3;
  options.prefetch = 4;  // tokens of the bulk below name 60 matters each
  bucket.register_kind<Slow>("slow", options);
  auto recorder = std::make_shared<Recorder>();
  bucket.provide(recorder);
  bucket.notify_many(versions(300, 1));

  Runner runner(bucket);
  std::int64_t most = 0;
  wait_until(
      [&] {
        most = std::max(most, leased(name));
        return count_converged(name, "slow") == 300;
      },
      60s, "all 300 matters to become ready", [&] { return describe_unconverged(name); });
  runner.stop();
  CHECK(most >= 1);
  CHECK(most <= 4);
  CHECK(recorder->total() >= 300);
}
