// One attempt as a pure function (engine/attempt.hpp): each way an attempt
// can end, turned into the outcome the write-back stores. No servers.
#include "engine/attempt.hpp"

#include <catch2/catch.hpp>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include "dmm/errors.hpp"

using namespace std::chrono_literals;
using dmm::detail::AttemptPolicy;
using dmm::detail::Claimed;
using dmm::detail::KindHooks;
using dmm::detail::OutcomeKind;
using dmm::detail::run_attempt;

namespace {

struct Fixture {
  std::shared_ptr<spdlog::logger> log = std::make_shared<spdlog::logger>("attempt", std::make_shared<spdlog::sinks::null_sink_mt>());
  std::stop_source stop;
  AttemptPolicy policy{.max_state_bytes = 1024, .backoff = {.initial = 100ms, .max = 10s, .multiplier = 2.0, .jitter = 0.0}};
  Claimed row{.id = 7, .identity = "kitchen", .state = R"({"song":"Blue"})", .generation = 3, .epoch = 11, .attempts = 2};

  dmm::detail::Outcome run(const KindHooks& hooks) {
    dmm::Context ctx({nullptr, log.get(), "music-player", row.identity, row.attempts + 1, stop.get_token()});
    return run_attempt(hooks, row, ctx, policy, 0.5);
  }
};

KindHooks materializing(std::function<dmm::Result(nlohmann::json&, dmm::Context&)> fn) {
  KindHooks hooks;
  hooks.materialize = std::move(fn);
  return hooks;
}

}  // namespace

TEST_CASE("an attempt that returns done is done, fenced by the claim's epoch and generation", "[attempt]") {
  Fixture f;
  auto out = f.run(materializing([](nlohmann::json&, dmm::Context&) { return dmm::Result::done(); }));
  CHECK(out.kind == OutcomeKind::done);
  CHECK(out.id == 7);
  CHECK(out.epoch == 11);
  CHECK(out.generation == 3);
  CHECK_FALSE(out.state.has_value());  // unchanged: nothing to store
}

TEST_CASE("an attempt that changes the state carries the new state", "[attempt]") {
  Fixture f;
  auto out = f.run(materializing([](nlohmann::json& s, dmm::Context&) {
    s["playing"] = true;
    return dmm::Result::done();
  }));
  CHECK(out.kind == OutcomeKind::done);
  REQUIRE(out.state.has_value());
  CHECK((*out.state)["playing"] == true);
}

TEST_CASE("requeue_after becomes a requeue with its delay, at least 1 ms", "[attempt]") {
  Fixture f;
  auto out = f.run(materializing([](nlohmann::json&, dmm::Context&) { return dmm::Result::requeue_after(250ms); }));
  CHECK(out.kind == OutcomeKind::requeue);
  CHECK(out.delay_ms == 250);
  out = f.run(materializing([](nlohmann::json&, dmm::Context&) { return dmm::Result::requeue_after(0ms); }));
  CHECK(out.delay_ms == 1);
}

TEST_CASE("a throw is retried after the kind's backoff for the next attempt", "[attempt]") {
  Fixture f;
  auto out = f.run(materializing([](nlohmann::json&, dmm::Context&) -> dmm::Result { throw std::runtime_error("busy"); }));
  CHECK(out.kind == OutcomeKind::retry);
  CHECK(out.error == "busy");
  CHECK(out.delay_ms == 400);  // third attempt, no jitter: 100 ms * 2 * 2
}

TEST_CASE("a throw that is not a std::exception is retried with a readable error", "[attempt]") {
  Fixture f;
  auto out = f.run(materializing([](nlohmann::json&, dmm::Context&) -> dmm::Result { throw 42; }));
  CHECK(out.kind == OutcomeKind::retry);
  CHECK_THAT(out.error, Catch::Contains("not derived from std::exception"));
}

TEST_CASE("a TerminalError fails the matter, also after a stop request", "[attempt]") {
  Fixture f;
  f.stop.request_stop();
  auto out = f.run(materializing([](nlohmann::json&, dmm::Context&) -> dmm::Result { throw dmm::TerminalError("bad"); }));
  CHECK(out.kind == OutcomeKind::failed);
  CHECK(out.error == "bad");
}

TEST_CASE("a throw after a stop request releases the matter without counting an attempt", "[attempt]") {
  Fixture f;
  auto out = f.run(materializing([&](nlohmann::json&, dmm::Context& ctx) -> dmm::Result {
    f.stop.request_stop();
    CHECK(ctx.stop_requested());
    throw std::runtime_error("interrupted");
  }));
  CHECK(out.kind == OutcomeKind::release);
  CHECK(out.error.empty());
}

TEST_CASE("a materializer that leaves a state over max_state_bytes fails terminally", "[attempt]") {
  Fixture f;
  auto out = f.run(materializing([](nlohmann::json& s, dmm::Context&) {
    s["blob"] = std::string(2000, 'x');
    return dmm::Result::done();
  }));
  CHECK(out.kind == OutcomeKind::failed);
  CHECK_THAT(out.error, Catch::Contains("over max_state_bytes (1024)"));
  CHECK_FALSE(out.state.has_value());
}

TEST_CASE("a matter being removed is finalized, by the kind's finalize if it has one", "[attempt]") {
  Fixture f;
  f.row.deleting = true;
  bool finalized = false;
  KindHooks hooks = materializing([](nlohmann::json&, dmm::Context&) -> dmm::Result { FAIL("materialize ran"); return dmm::Result::done(); });
  CHECK(f.run(hooks).kind == OutcomeKind::finalized);  // no finalize: deleted at once
  hooks.finalize = [&](nlohmann::json& s, dmm::Context&) { finalized = s["song"] == "Blue"; };
  CHECK(f.run(hooks).kind == OutcomeKind::finalized);
  CHECK(finalized);
  hooks.finalize = [](nlohmann::json&, dmm::Context&) { throw std::runtime_error("still running"); };
  CHECK(f.run(hooks).kind == OutcomeKind::retry);  // a failed finalize is retried like any attempt
}

TEST_CASE("released hands a claimed matter back unattempted", "[attempt]") {
  Fixture f;
  auto out = dmm::detail::released(f.row);
  CHECK(out.kind == OutcomeKind::release);
  CHECK(out.epoch == 11);
  CHECK(out.started_ms == 0);  // never ran: not recorded in the history
}

TEST_CASE("the attempt that reaches max_attempts gives up: failed, naming the count and the last error",
          "[attempt]") {
  Fixture f;
  f.policy.max_attempts = 3;  // the row has failed twice: this is the third
  auto out = f.run(materializing([](nlohmann::json&, dmm::Context&) -> dmm::Result { throw std::runtime_error("busy"); }));
  CHECK(out.kind == OutcomeKind::failed);
  CHECK(out.error == "gave up after 3 attempts (KindOptions::max_attempts); last error: busy");
  CHECK(out.delay_ms == 0);
  f.policy.max_attempts = 4;
  CHECK(f.run(materializing([](nlohmann::json&, dmm::Context&) -> dmm::Result { throw std::runtime_error("busy"); }))
            .kind == OutcomeKind::retry);
}

TEST_CASE("a RetryAfter sets the delay of the next attempt instead of the backoff, capped", "[attempt]") {
  Fixture f;
  auto out = f.run(materializing([](nlohmann::json&, dmm::Context&) -> dmm::Result {
    throw dmm::RetryAfter(std::chrono::seconds(7), "429 Too Many Requests");
  }));
  CHECK(out.kind == OutcomeKind::retry);
  CHECK(out.delay_ms == 7000);
  CHECK(out.error == "429 Too Many Requests");
  out = f.run(materializing([](nlohmann::json&, dmm::Context&) -> dmm::Result {
    throw dmm::RetryAfter(std::chrono::hours(100), "later");
  }));
  CHECK(out.delay_ms == std::chrono::duration_cast<std::chrono::milliseconds>(dmm::RetryAfter::kMaxDelay).count());
  out = f.run(materializing([](nlohmann::json&, dmm::Context&) -> dmm::Result {
    throw dmm::RetryAfter(-5s, "negative");
  }));
  CHECK(out.delay_ms == 1);
}

TEST_CASE("a RetryAfter counts towards max_attempts", "[attempt]") {
  Fixture f;
  f.policy.max_attempts = 3;
  auto out = f.run(materializing([](nlohmann::json&, dmm::Context&) -> dmm::Result {
    throw dmm::RetryAfter(1s, "429");
  }));
  CHECK(out.kind == OutcomeKind::failed);
  CHECK_THAT(out.error, Catch::Contains("gave up after 3 attempts") && Catch::Contains("429"));
}

TEST_CASE("with resync_every, a done attempt is due again after the period, within ±10%", "[attempt]") {
  Fixture f;
  f.policy.resync_every = 10s;
  KindHooks done = materializing([](nlohmann::json&, dmm::Context&) { return dmm::Result::done(); });
  dmm::Context ctx({nullptr, f.log.get(), "music-player", f.row.identity, 1, f.stop.get_token()});
  auto early = run_attempt(done, f.row, ctx, f.policy, 0.0);
  auto late = run_attempt(done, f.row, ctx, f.policy, 0.999999);
  CHECK(early.kind == OutcomeKind::requeue);
  CHECK(early.delay_ms == 9000);
  CHECK(late.delay_ms == 11000);
  // The materializer's own requeue_after wins.
  auto own = f.run(materializing([](nlohmann::json&, dmm::Context&) { return dmm::Result::requeue_after(3s); }));
  CHECK(own.delay_ms == 3000);
}
