// Tokens that name many matters: what bulk notifies, sweeps and write-backs
// publish (one NATS message per up to 64 matters instead of one per matter).
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
    if (id.rfind("blocker-", 0) == 0) {  // waits until the test opens the gate
      ctx.service<Gate>().arrive();
      if (!ctx.service<Gate>().wait(ctx.stop_token())) return dmm::Result::done();
    }
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

std::int64_t leased(const std::string& bucket) { return count_matters(bucket, "", "lease_owner IS NOT NULL"); }

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
  auto gate = std::make_shared<Gate>();
  bucket.provide(recorder);
  bucket.provide(gate);
  Runner runner(bucket);
  std::int64_t most = 0;
  auto sample = [&] { most = std::max(most, leased(name)); };

  // Single notifies first: the worker learns that tokens name one matter
  // and fetches as many tokens as it has room for.
  for (int i = 0; i < 20; ++i) bucket.notify(Slow{.id = "single-" + std::to_string(i), .version = 1});
  wait_until([&] { return sample(), count_converged(name, "slow") == 20; }, 30s, "the single notifies to converge",
             [&] { return describe_unconverged(name); });

  // Four blockers fill the prefetch while the bulk's tokens land, so a fetch
  // after the gate opens gets 60-matter tokens: one fits in part (its rest is
  // sent again) and, when the fetch sized for one-matter tokens got more than
  // one (most runs: when two or more slots are free by then), the others not
  // at all (handed back to the stream; logged at debug level).
  for (int i = 0; i < 4; ++i) bucket.notify(Slow{.id = "blocker-" + std::to_string(i), .version = 1});
  wait_until([&] { return leased(name) == 4; }, 30s, "the blockers to fill the prefetch");
  bucket.notify_many(versions(300, 1));
  Nats nats(servers().nats);
  wait_until([&] { return nats.stream_messages("DMM_" + name) == 5; }, 10s, "the bulk's 5 tokens in the stream");
  gate->open();

  wait_until([&] { return sample(), count_converged(name, "slow") == 324; }, 60s, "all 324 matters to become ready",
             [&] { return describe_unconverged(name); });
  runner.stop();
  CHECK(most >= 1);
  CHECK(most <= 4);
  CHECK(recorder->total() >= 324);
}
