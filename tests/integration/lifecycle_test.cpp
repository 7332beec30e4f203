// A matter's life: retries with backoff, no head-of-line blocking, requeue,
// terminal failure and revival, finalize on remove, and no lost update.
#include <catch2/catch.hpp>
#include <condition_variable>

#include "harness.hpp"

using namespace dmm_test;

namespace {

// Fails `fail_times` attempts, or terminally; optionally asks for one requeue.
struct Flaky {
  std::string id;
  long seq = 0;
  int fail_times = 0;
  bool terminal = false;
  long requeue_ms = 0;

  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context& ctx) {
    auto& recorder = ctx.service<Recorder>();
    const std::size_t previous_runs = recorder.count(id);
    Recorder::Entry entry{.value = std::to_string(seq), .attempt = ctx.attempt(), .started = Clock::now()};
    auto record = [&] {
      entry.finished = Clock::now();
      recorder.record(id, entry);
    };
    if (terminal) {
      record();
      throw dmm::TerminalError("speaker missing for " + id);
    }
    if (ctx.attempt() <= fail_times) {
      record();
      throw std::runtime_error("planned failure " + std::to_string(ctx.attempt()));
    }
    record();
    if (requeue_ms > 0 && previous_runs == 0) return dmm::Result::requeue_after(milliseconds(requeue_ms));
    return dmm::Result::done();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Flaky, id, seq, fail_times, terminal, requeue_ms)

// Has a finalizer, which records its calls under "finalize:<id>".
struct Finalized {
  std::string id;
  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context&) { return dmm::Result::done(); }
  void finalize(dmm::Context& ctx) { ctx.service<Recorder>().record("finalize:" + id, {.attempt = ctx.attempt()}); }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Finalized, id)

// Blocks at the gate while materializing seq 1; writes back what it saw.
struct Blocking {
  std::string id;
  long seq = 0;
  std::string observed{};
  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context& ctx) {
    ctx.service<Recorder>().record(id, {.value = std::to_string(seq), .attempt = ctx.attempt()});
    if (seq == 1) {
      auto& gate = ctx.service<Gate>();
      gate.arrive();
      if (!gate.wait(ctx.stop_token())) throw std::runtime_error("gate never opened");
    }
    observed = "saw " + std::to_string(seq);
    return dmm::Result::done();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Blocking, id, seq, observed)

struct Fixture {
  std::string name;
  dmm::Bucket bucket;
  std::shared_ptr<Recorder> recorder = std::make_shared<Recorder>();
  explicit Fixture(std::string prefix) : name(unique_name(prefix)), bucket(open_bucket(name)) {
    bucket.provide(recorder);
  }
  std::optional<MatterRow> row(const std::string& kind, const std::string& id) { return query_matter(name, kind, id); }
  bool converged(const std::string& kind, const std::string& id) {
    auto r = row(kind, id);
    return r && r->phase == "ready" && r->materialized_generation == r->generation;
  }
  std::function<std::string()> describe() {
    return [n = name] { return describe_unconverged(n); };
  }
};

long ms_between(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration_cast<milliseconds>(to - from).count();
}

}  // namespace

TEST_CASE("a failing materialization is retried until it succeeds", "[retry]") {
  Fixture f("retry");
  auto options = fast_kind();
  options.backoff = {.initial = 200ms, .max = 2000ms, .multiplier = 2.0, .jitter = 0.2};
  f.bucket.register_kind<Flaky>("flaky", options);
  Runner runner(f.bucket);
  f.bucket.notify(Flaky{.id = "speaker", .seq = 1, .fail_times = 3});

  // While it fails, the row says so.
  wait_until(
      [&] {
        auto r = f.row("flaky", "speaker");
        return r && r->phase == "retrying" && r->attempts >= 1 &&
               r->last_error.find("planned failure") != std::string::npos;
      },
      10s, "speaker to be retrying with its error recorded", f.describe());

  wait_until([&] { return f.converged("flaky", "speaker"); }, 15s, "speaker to become ready", f.describe());
  auto r = f.row("flaky", "speaker");
  CHECK(r->attempts == 0);  // reset by the success

  auto runs = f.recorder->entries("speaker");
  REQUIRE(runs.size() == 4);
  for (std::size_t i = 0; i < runs.size(); ++i) CHECK(runs[i].attempt == static_cast<int>(i) + 1);
  runner.stop();
}

TEST_CASE("retry delays grow exponentially", "[retry]") {
  Fixture f("backoff");
  auto options = fast_kind();
  options.backoff = {.initial = 200ms, .max = 5000ms, .multiplier = 2.0, .jitter = 0.0};
  f.bucket.register_kind<Flaky>("flaky", options);
  Runner runner(f.bucket);
  f.bucket.notify(Flaky{.id = "amp", .seq = 1, .fail_times = 3});
  wait_until([&] { return f.converged("flaky", "amp"); }, 20s, "amp to become ready", f.describe());
  runner.stop();

  auto runs = f.recorder->entries("amp");
  REQUIRE(runs.size() == 4);
  // Lower bounds prove the growth (a flat 200 ms schedule fails the second);
  // upper bounds are loose because a loaded machine delays wake-ups.
  const long expected[] = {200, 400, 800};
  for (std::size_t i = 1; i < runs.size(); ++i) {
    const long gap = ms_between(runs[i - 1].finished, runs[i].started);
    INFO("gap before attempt " << i + 1 << ": " << gap << " ms, expected " << expected[i - 1] << " ms");
    CHECK(gap >= expected[i - 1] - 20);    // never early
    CHECK(gap <= expected[i - 1] + 1500);  // and not forgotten
  }
}

TEST_CASE("a failing matter does not block others", "[retry]") {
  Fixture f("hol");
  auto options = fast_kind(1);  // one materialization at a time
  options.backoff = {.initial = 300ms, .max = 1000ms, .multiplier = 2.0, .jitter = 0.2};
  f.bucket.register_kind<Flaky>("flaky", options);
  Runner runner(f.bucket);

  f.bucket.notify(Flaky{.id = "broken", .seq = 1, .fail_times = 1'000'000});
  wait_until([&] { auto r = f.row("flaky", "broken"); return r && r->attempts >= 1; }, 10s,
             "broken to fail once", f.describe());

  std::vector<Flaky> healthy;
  for (int i = 0; i < 20; ++i) healthy.push_back({.id = "ok-" + std::to_string(i), .seq = 1});
  f.bucket.notify_many(healthy);
  wait_until([&] { return count_matters(f.name, "flaky", "identity LIKE 'ok-%' AND phase = 'ready'") == 20; }, 10s,
             "the 20 healthy matters to become ready while broken fails", f.describe());

  // The broken one keeps being retried on its own schedule, without stopping.
  const int attempts_then = f.row("flaky", "broken")->attempts;
  wait_until([&] { return f.row("flaky", "broken")->attempts >= attempts_then + 2; }, 10s,
             "broken to keep being retried", f.describe());
  CHECK(f.row("flaky", "broken")->phase != "ready");
  runner.stop();
}

TEST_CASE("requeue_after materializes again after the delay, not before", "[retry]") {
  Fixture f("requeue");
  f.bucket.register_kind<Flaky>("flaky", fast_kind());
  Runner runner(f.bucket);
  f.bucket.notify(Flaky{.id = "radio", .seq = 1, .requeue_ms = 1200});

  wait_until([&] { return f.converged("flaky", "radio"); }, 10s, "radio's first materialization", f.describe());
  REQUIRE(f.recorder->count("radio") == 1);
  CHECK(f.row("flaky", "radio")->work_owed);  // the requeue is owed work

  wait_until([&] { return f.recorder->count("radio") >= 2; }, 10s, "radio to be materialized again", f.describe());
  auto runs = f.recorder->entries("radio");
  const long gap = ms_between(runs[0].finished, runs[1].started);
  INFO("gap " << gap << " ms");
  CHECK(gap >= 1200 - 20);
  CHECK(gap <= 1200 + 3000);

  // The second run returned done(): nothing more is owed.
  wait_until([&] { auto r = f.row("flaky", "radio"); return r && !r->work_owed && r->phase == "ready"; }, 5s,
             "radio to owe nothing", f.describe());
  holds_for([&] { return f.recorder->count("radio") == 2; }, 1500ms, "no third materialization of radio");
  runner.stop();
}

TEST_CASE("a terminal error marks the matter failed until its state changes", "[retry]") {
  Fixture f("terminal");
  f.bucket.register_kind<Flaky>("flaky", fast_kind());
  Runner runner(f.bucket);
  f.bucket.notify(Flaky{.id = "tv", .seq = 1, .terminal = true});

  wait_until([&] { return f.row("flaky", "tv")->phase == "failed"; }, 10s, "tv to be failed", f.describe());
  auto failed = f.row("flaky", "tv");
  CHECK_THAT(failed->last_error, Catch::Contains("speaker missing for tv"));
  CHECK(failed->state.at("terminal") == true);  // the stored state is kept
  holds_for([&] { return f.recorder->count("tv") == 1 && f.row("flaky", "tv")->phase == "failed"; }, 1500ms,
            "tv not to be retried after a terminal error");

  f.bucket.notify(Flaky{.id = "tv", .seq = 2, .terminal = false});
  wait_until([&] { return f.converged("flaky", "tv"); }, 10s, "tv to be revived by a new state", f.describe());
  CHECK(f.row("flaky", "tv")->attempts == 0);
  CHECK(f.recorder->entries("tv").back().value == "2");
  runner.stop();
}

TEST_CASE("remove runs finalize once, then deletes the matter", "[retry]") {
  Fixture f("finalize");
  f.bucket.register_kind<Finalized>("finalized", fast_kind());
  Runner runner(f.bucket);
  f.bucket.notify(Finalized{.id = "old-speaker"});
  wait_until([&] { return f.converged("finalized", "old-speaker"); }, 10s, "old-speaker to become ready",
             f.describe());
  CHECK(f.recorder->count("finalize:old-speaker") == 0);

  REQUIRE(f.bucket.remove<Finalized>("old-speaker"));
  wait_until([&] { return query_phase(f.name, "finalized", "old-speaker") == "(absent)"; }, 10s,
             "old-speaker to be deleted after finalize", f.describe());
  CHECK(f.recorder->count("finalize:old-speaker") == 1);
  CHECK_FALSE(f.bucket.get<Finalized>("old-speaker").has_value());
  runner.stop();
}

TEST_CASE("remove of a type without finalize deletes the matter at once", "[retry]") {
  Fixture f("nofinal");
  f.bucket.register_kind<Flaky>("flaky", fast_kind());
  f.bucket.notify(Flaky{.id = "lamp", .seq = 1});
  REQUIRE(f.bucket.remove<Flaky>("lamp"));
  CHECK(query_phase(f.name, "flaky", "lamp") == "(absent)");
}

TEST_CASE("a notify during materialization is not overwritten by its write-back", "[retry]") {
  Fixture f("lostupdate");
  auto gate = std::make_shared<Gate>();
  f.bucket.provide(gate);
  f.bucket.register_kind<Blocking>("blocking", fast_kind());
  Runner runner(f.bucket);

  f.bucket.notify(Blocking{.id = "den", .seq = 1});
  wait_until([&] { return gate->arrived() >= 1; }, 10s, "den's materialization to start", f.describe());
  const auto during = f.row("blocking", "den");
  REQUIRE(during.has_value());
  CHECK(during->phase == "reconciling");

  f.bucket.notify(Blocking{.id = "den", .seq = 2});  // lands while seq 1 is being materialized
  gate->open();

  wait_until(
      [&] {
        auto r = f.row("blocking", "den");
        return r && r->phase == "ready" && r->materialized_generation == r->generation &&
               r->state.at("observed") == "saw 2";
      },
      10s, "den to be materialized with the newer state", f.describe());
  auto r = f.row("blocking", "den");
  CHECK(r->state.at("seq") == 2);
  auto runs = f.recorder->entries("den");
  REQUIRE(runs.size() >= 2);
  CHECK(runs.front().value == "1");
  CHECK(runs.back().value == "2");
  CHECK(gate->arrived() == 1);  // seq 1 was not materialized again
  runner.stop();
}
