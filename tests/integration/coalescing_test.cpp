// Repeated notifies of one matter coalesce into one pending token, and the
// latest state is the one materialized.
#include <catch2/catch.hpp>

#include "harness.hpp"

using namespace dmm_test;

namespace {

struct Counter {
  std::string id;
  long seq = 0;
  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context& ctx) {
    ctx.service<Recorder>().record(id, {.value = std::to_string(seq), .attempt = ctx.attempt()});
    return dmm::Result::done();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Counter, id, seq)

}  // namespace

TEST_CASE("repeated notifies of one matter coalesce and the latest state is materialized", "[notify]") {
  const std::string name = unique_name("coalesce");
  auto bucket = open_bucket(name);
  bucket.register_kind<Counter>("counter", fast_kind());
  auto recorder = std::make_shared<Recorder>();
  bucket.provide(recorder);

  const std::vector<std::string> ids = {"hot-1", "hot-2", "hot-3"};
  constexpr long kNotifies = 200;
  for (long seq = 1; seq <= kNotifies; ++seq)
    for (const auto& id : ids) bucket.notify(Counter{.id = id, .seq = seq});

  // No worker runs: once the asynchronous publishes have landed, the stream
  // holds one token per matter, not one per notify.
  Nats nats(servers().nats);
  const auto stream = "DMM_" + name;
  wait_until([&] { return nats.stream_messages(stream) >= ids.size(); }, 10s, "a token per matter in the stream");
  holds_for([&] { return nats.stream_messages(stream) == ids.size(); }, 500ms, "exactly one token per matter");
  for (const auto& id : ids) CHECK(query_matter(name, "counter", id)->state.at("seq") == kNotifies);

  Runner runner(bucket);
  wait_until([&] { return count_converged(name, "counter") == static_cast<std::int64_t>(ids.size()); }, 15s,
             "every hot matter to become ready", [&] { return describe_unconverged(name); });
  runner.stop();

  for (const auto& id : ids) {
    INFO(id);
    auto seen = recorder->entries(id);
    REQUIRE_FALSE(seen.empty());
    CHECK(seen.back().value == std::to_string(kNotifies));  // the latest state
    CHECK(seen.size() <= 5);  // far fewer than the 200 notifies
  }
}

TEST_CASE("notifies that keep coming while a worker runs converge on the last state", "[notify]") {
  const std::string name = unique_name("stream");
  auto bucket = open_bucket(name);
  bucket.register_kind<Counter>("counter", fast_kind());
  auto recorder = std::make_shared<Recorder>();
  bucket.provide(recorder);
  Runner runner(bucket);

  constexpr long kNotifies = 300;
  for (long seq = 1; seq <= kNotifies; ++seq) bucket.notify(Counter{.id = "busy", .seq = seq});

  wait_until(
      [&] {
        auto row = query_matter(name, "counter", "busy");
        return row && row->phase == "ready" && row->materialized_generation == row->generation;
      },
      15s, "busy to become ready", [&] { return describe_unconverged(name); });
  runner.stop();
  auto seen = recorder->entries("busy");
  REQUIRE_FALSE(seen.empty());
  CHECK(seen.back().value == std::to_string(kNotifies));
  CHECK(seen.size() < static_cast<std::size_t>(kNotifies));
  CHECK(query_matter(name, "counter", "busy")->state.at("seq") == kNotifies);
}
