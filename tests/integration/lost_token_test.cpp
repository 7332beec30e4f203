// Tokens are lossy: with every token gone, the sweeper re-sends them and every
// matter still converges.
#include <catch2/catch.hpp>

#include "harness.hpp"

using namespace dmm_test;

namespace {

struct Item {
  std::string id;
  long version = 0;
  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context&) { return dmm::Result::done(); }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Item, id, version)

std::vector<Item> items(const std::string& prefix, int n, long version) {
  std::vector<Item> out;
  for (int i = 0; i < n; ++i) out.push_back({.id = prefix + std::to_string(i), .version = version});
  return out;
}

}  // namespace

TEST_CASE("matters converge after their tokens were purged from the stream", "[notify]") {
  const std::string name = unique_name("lost");
  auto bucket = open_bucket(name);
  bucket.register_kind<Item>("item", fast_kind(8));

  auto batch = items("item-", 500, 1);
  for (int i = 0; i < 50; ++i) bucket.notify(batch[static_cast<std::size_t>(i)]);  // one by one
  bucket.notify_many(std::vector<Item>(batch.begin() + 50, batch.end()));      // and in bulk
  REQUIRE(count_matters(name, "item") == 500);

  // Tokens are published asynchronously after notify returns: wait until all
  // 500 are in the stream (one per matter), then lose them all.
  Nats nats(servers().nats);
  wait_until([&] { return nats.stream_messages("DMM_" + name) == 500; }, 10s, "500 tokens in the stream");
  nats.purge_stream("DMM_" + name);
  REQUIRE(nats.stream_messages("DMM_" + name) == 0);

  Runner runner(bucket);
  wait_until([&] { return count_converged(name, "item") == 500; }, 30s, "all 500 matters to become ready",
             [&] { return describe_unconverged(name); });
  runner.stop();
}

TEST_CASE("matters converge when the stream is purged while workers run", "[notify]") {
  const std::string name = unique_name("purged");
  auto bucket = open_bucket(name);
  bucket.register_kind<Item>("item", fast_kind(8));
  Runner runner(bucket);
  Nats nats(servers().nats);

  for (long round = 1; round <= 3; ++round) {
    bucket.notify_many(items("item-", 300, round));
    nats.purge_stream("DMM_" + name);
  }
  wait_until([&] { return count_converged(name, "item") == 300; }, 30s, "all 300 matters to become ready",
             [&] { return describe_unconverged(name); });
  CHECK(count_matters(name, "item", "(state->>'version')::int = 3") == 300);
  runner.stop();
}
