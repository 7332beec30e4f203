// Flow control of one matter: giving up after max_attempts, a RetryAfter's own
// delay, delayed notifies (NotifyOptions) and resync, on real servers.
#include <catch2/catch.hpp>

#include "harness.hpp"

using namespace dmm_test;

namespace {

// Fails its first `fail_times` attempts; with `retry_after_ms` by throwing
// dmm::RetryAfter with that delay, else an ordinary error. Waits at the Gate
// (if any) while `hold` is set.
struct Throttled {
  std::string id;
  long seq = 0;
  int fail_times = 0;
  long retry_after_ms = 0;
  bool hold = false;

  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context& ctx) {
    Recorder::Entry entry{.value = std::to_string(seq), .attempt = ctx.attempt(), .started = Clock::now()};
    if (hold) {
      auto& gate = ctx.service<Gate>();
      gate.arrive();
      if (!gate.wait(ctx.stop_token())) throw std::runtime_error("gate never opened");
    }
    entry.finished = Clock::now();
    ctx.service<Recorder>().record(id, entry);
    if (ctx.attempt() <= fail_times) {
      const auto what = "planned failure " + std::to_string(ctx.attempt());
      if (retry_after_ms > 0) throw dmm::RetryAfter(milliseconds(retry_after_ms), what);
      throw std::runtime_error(what);
    }
    return dmm::Result::done();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Throttled, id, seq, fail_times, retry_after_ms, hold)

struct Fixture {
  std::string name;
  dmm::Bucket bucket;
  std::shared_ptr<Recorder> recorder = std::make_shared<Recorder>();
  std::shared_ptr<Gate> gate = std::make_shared<Gate>();
  explicit Fixture(std::string prefix, dmm::KindOptions options = fast_kind())
      : name(unique_name(prefix)), bucket(open_bucket(name)) {
    bucket.provide(recorder);
    bucket.provide(gate);
    bucket.register_kind<Throttled>("throttled", options);
  }
  std::optional<MatterRow> row(const std::string& id) { return query_matter(name, "throttled", id); }
  bool converged(const std::string& id) {
    auto r = row(id);
    return r && r->phase == "ready" && r->materialized_generation == r->generation;
  }
  std::function<std::string()> describe() {
    return [n = name] { return describe_unconverged(n); };
  }
};

long ms_between(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration_cast<milliseconds>(to - from).count();
}

dmm::KindOptions capped(int max_attempts) {
  auto options = fast_kind();
  options.backoff = {.initial = 50ms, .max = 200ms, .multiplier = 2.0, .jitter = 0.0};
  options.max_attempts = max_attempts;
  return options;
}

}  // namespace

TEST_CASE("a matter gives up after max_attempts failed attempts, naming the count and the last error", "[flow]") {
  Fixture f("cap", capped(3));
  Runner runner(f.bucket);
  f.bucket.notify(Throttled{.id = "api", .seq = 1, .fail_times = 1000});
  wait_until([&] { auto r = f.row("api"); return r && r->phase == "failed"; }, 15s, "api to give up", f.describe());
  auto r = f.row("api");
  CHECK(r->attempts == 3);
  CHECK(r->last_error == "gave up after 3 attempts (KindOptions::max_attempts); last error: planned failure 3");
  CHECK_FALSE(r->work_owed);
  auto stats = dmm::kind_stats(servers().postgres, f.name);
  REQUIRE(stats.size() == 1);
  CHECK(stats[0].gave_up == 1);
  auto detail = dmm::describe(servers().postgres, f.name, "throttled", "api");
  REQUIRE(detail);
  CHECK_THAT(detail->why, Catch::StartsWith("failed: gave up after 3 attempts"));
  // It stays given up: no fourth attempt.
  holds_for([&] { return f.recorder->count("api") == 3; }, 600ms, "no attempt after giving up");
}

TEST_CASE("a retry or a new state starts the attempt count of a matter that gave up again", "[flow]") {
  Fixture f("cap-reset", capped(2));
  Runner runner(f.bucket);
  f.bucket.notify(Throttled{.id = "api", .seq = 1, .fail_times = 1000});
  wait_until([&] { auto r = f.row("api"); return r && r->phase == "failed"; }, 15s, "api to give up", f.describe());
  REQUIRE(f.recorder->count("api") == 2);

  REQUIRE(f.bucket.retry<Throttled>("api"));
  wait_until([&] { return f.recorder->count("api") == 4 && f.row("api")->phase == "failed"; }, 15s,
             "two more attempts after the retry, then giving up again", f.describe());
  CHECK(f.row("api")->attempts == 2);

  // A new state that succeeds on its second attempt: the count starts at 1.
  f.bucket.notify(Throttled{.id = "api", .seq = 2, .fail_times = 1});
  wait_until([&] { return f.converged("api"); }, 15s, "api's new state to converge", f.describe());
  auto runs = f.recorder->entries("api");
  REQUIRE(runs.size() == 6);
  CHECK(runs[4].attempt == 1);
  CHECK(runs[5].attempt == 2);
}

TEST_CASE("a RetryAfter's delay, not the backoff, comes before the next attempt; it counts as a failure", "[flow]") {
  auto options = capped(0);  // backoff 50 ms: far shorter than the RetryAfter
  Fixture f("retry-after", options);
  Runner runner(f.bucket);
  f.bucket.notify(Throttled{.id = "quota", .seq = 1, .fail_times = 1, .retry_after_ms = 900});
  wait_until([&] { auto r = f.row("quota"); return r && r->phase == "retrying"; }, 10s, "quota to be retrying",
             f.describe());
  CHECK(f.row("quota")->attempts == 1);
  CHECK(f.row("quota")->last_error == "planned failure 1");
  wait_until([&] { return f.converged("quota"); }, 15s, "quota to converge", f.describe());
  auto runs = f.recorder->entries("quota");
  REQUIRE(runs.size() == 2);
  const long gap = ms_between(runs[0].finished, runs[1].started);
  INFO("gap before attempt 2: " << gap << " ms");
  CHECK(gap >= 880);
  CHECK(gap <= 900 + 2000);
}

TEST_CASE("a delayed notify is stored at once and not started before its delay", "[flow]") {
  Fixture f("delay");
  Runner runner(f.bucket);
  const auto notified = Clock::now();
  f.bucket.notify(Throttled{.id = "later", .seq = 1}, {.delay = 1200ms});
  auto r = f.row("later");
  REQUIRE(r);
  CHECK(r->state["seq"] == 1);
  CHECK(r->phase == "pending");
  auto detail = dmm::describe(servers().postgres, f.name, "throttled", "later");
  REQUIRE(detail);
  CHECK_THAT(detail->why, Catch::StartsWith("delayed: generation 1 is not due before"));
  wait_until([&] { return f.converged("later"); }, 15s, "later to converge", f.describe());
  auto runs = f.recorder->entries("later");
  REQUIRE(runs.size() == 1);
  CHECK(ms_between(notified, runs[0].started) >= 1180);
}

TEST_CASE("not_before works in notify_many and in the caller's transaction", "[flow]") {
  Fixture f("not-before");
  Runner runner(f.bucket);
  const auto notified = Clock::now();
  const auto at = std::chrono::system_clock::now() + 1s;
  f.bucket.notify_many(std::vector<Throttled>{{.id = "a", .seq = 1}, {.id = "b", .seq = 1}}, {.not_before = at});
  {
    pqxx::work txn(pg());
    f.bucket.notify(txn, Throttled{.id = "c", .seq = 1}, {.not_before = at});
    txn.commit();
  }
  for (const char* id : {"a", "b", "c"}) {
    wait_until([&] { return f.converged(id); }, 15s, std::string(id) + " to converge", f.describe());
    auto runs = f.recorder->entries(id);
    REQUIRE(runs.size() == 1);
    INFO(id);
    CHECK(ms_between(notified, runs[0].started) >= 950);
  }
}

TEST_CASE("a notify without a delay makes a delayed matter due now", "[flow]") {
  Fixture f("undelay");
  Runner runner(f.bucket);
  f.bucket.notify(Throttled{.id = "m", .seq = 1}, {.delay = std::chrono::hours(1)});
  f.bucket.notify(Throttled{.id = "m", .seq = 2});
  wait_until([&] { return f.converged("m"); }, 10s, "m to converge at once", f.describe());
  CHECK(f.row("m")->state["seq"] == 2);
}

TEST_CASE("a delayed notify of a matter being materialized keeps its delay after the write-back", "[flow]") {
  Fixture f("delay-leased");
  Runner runner(f.bucket);
  f.bucket.notify(Throttled{.id = "busy", .seq = 1, .hold = true});
  wait_until([&] { return f.gate->arrived() == 1; }, 10s, "busy to be materializing", f.describe());
  const auto notified = Clock::now();
  f.bucket.notify(Throttled{.id = "busy", .seq = 2}, {.delay = 1500ms});
  f.gate->open();
  wait_until([&] { return f.recorder->count("busy") == 1; }, 10s, "the first attempt to finish", f.describe());
  wait_until([&] { return f.converged("busy") && f.row("busy")->state["seq"] == 2; }, 15s,
             "busy's delayed state to converge", f.describe());
  auto runs = f.recorder->entries("busy");
  REQUIRE(runs.size() == 2);
  CHECK(runs[1].value == "2");
  CHECK(ms_between(notified, runs[1].started) >= 1480);
}

TEST_CASE("bad flow-control options are refused naming the kind, and nothing is stored", "[flow]") {
  Fixture f("flow-bad");
  auto bad_cap = fast_kind();
  bad_cap.max_attempts = -1;
  auto bad_resync = fast_kind();
  bad_resync.resync_every = 10ms;
  CHECK_THROWS_WITH(f.bucket.register_kind<Throttled>("resynced", bad_resync),
                    Catch::Contains("kind 'resynced'") && Catch::Contains("resync_every must be 0 (off) or from 1s"));
  CHECK_THROWS_WITH(f.bucket.register_kind<Throttled>("capped", bad_cap),
                    Catch::Contains("kind 'capped'") && Catch::Contains("max_attempts must be in 0..1000000"));
  auto bad_margin = fast_kind();
  bad_margin.lease_ttl = 3s;
  bad_margin.lease_margin = 2s;
  CHECK_THROWS_WITH(f.bucket.register_kind<Throttled>("margined", bad_margin),
                    Catch::Contains("kind 'margined'") && Catch::Contains("lease_margin is 2000ms") &&
                        Catch::Contains("up to half of lease_ttl (1500ms)"));
  bad_margin.lease_margin = -1ms;
  CHECK_THROWS_WITH(f.bucket.register_kind<Throttled>("margined", bad_margin), Catch::Contains("lease_margin is -1ms"));
  CHECK_THROWS_AS(f.bucket.notify(Throttled{.id = "x"}, {.delay = -5ms}), dmm::InvalidArgument);
  CHECK_THROWS_WITH(f.bucket.notify(Throttled{.id = "x"}, {.delay = -5ms}),
                    Catch::Contains("kind 'throttled'") && Catch::Contains("delay is negative"));
  CHECK_THROWS_WITH(
      f.bucket.notify(Throttled{.id = "x"}, {.not_before = std::chrono::system_clock::now() - std::chrono::hours(2)}),
      Catch::Contains("not_before is") && Catch::Contains("in the past"));
  CHECK_THROWS_WITH(
      f.bucket.notify(Throttled{.id = "x"}, {.delay = 1s, .not_before = std::chrono::system_clock::now()}),
      Catch::Contains("both delay and not_before"));
  CHECK_FALSE(f.row("x").has_value());
  // A time a little in the past (clock skew) means now.
  f.bucket.notify(Throttled{.id = "y"}, {.not_before = std::chrono::system_clock::now() - 5s});
  Runner runner(f.bucket);
  wait_until([&] { return f.converged("y"); }, 10s, "y to converge", f.describe());
}

TEST_CASE("with resync_every, a ready matter is materialized again about every period", "[flow]") {
  auto options = fast_kind();
  options.resync_every = 1s;
  Fixture f("resync", options);
  Runner runner(f.bucket);
  f.bucket.notify(Throttled{.id = "r", .seq = 1});
  wait_until([&] { return f.recorder->count("r") >= 3; }, 15s, "r to be materialized three times", f.describe());
  auto runs = f.recorder->entries("r");
  for (std::size_t i = 1; i < 3; ++i) {
    const long gap = ms_between(runs[i - 1].finished, runs[i].started);
    INFO("gap before run " << i + 1 << ": " << gap << " ms");
    CHECK(gap >= 880);
    CHECK(gap <= 1100 + 1500);
  }
  const auto phase = f.row("r")->phase;  // ready, or being resynced right now
  CHECK((phase == "ready" || phase == "reconciling"));
}

TEST_CASE("turning resync on schedules the matters that were already ready, within one period", "[flow]") {
  const auto name = unique_name("resync-late");
  auto recorder = std::make_shared<Recorder>();
  auto gate = std::make_shared<Gate>();
  {
    auto bucket = open_bucket(name);
    bucket.provide(recorder);
    bucket.provide(gate);
    bucket.register_kind<Throttled>("throttled", fast_kind());
    Runner runner(bucket);
    bucket.notify_many(std::vector<Throttled>{{.id = "a", .seq = 1}, {.id = "b", .seq = 1}, {.id = "c", .seq = 1}});
    wait_until([&] { return recorder->total() == 3; }, 15s, "three matters to be materialized once");
    wait_until([&] { return count_converged(name, "throttled") == 3; }, 15s, "three matters to be ready");
    runner.stop();
  }
  auto bucket = open_bucket(name);
  bucket.provide(recorder);
  bucket.provide(gate);
  auto options = fast_kind();
  options.resync_every = 1s;
  bucket.register_kind<Throttled>("throttled", options);
  Runner runner(bucket);
  wait_until([&] { return recorder->total() >= 6; }, 15s, "each ready matter to be resynced",
             [n = name] { return describe_unconverged(n); });
  for (const char* id : {"a", "b", "c"}) CHECK(recorder->count(id) >= 2);
}
