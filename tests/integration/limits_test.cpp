// Global limits of a kind across processes (docs/DESIGN.md, "Global
// concurrency", "Rate limit") on real servers: never more runs at once than
// KindOptions::global_concurrency, every slot used, a slot of a lease that
// ended without an outcome free again when the lease runs out; never more
// starts in a period than the rate limit allows, and the rate used.
#include <catch2/catch.hpp>

#include <atomic>

#include "harness.hpp"

using namespace dmm_test;

namespace {

// Runs in flight across every bucket of a test (they share this process, so
// one counter sees them all), and the most seen at once.
struct InFlight {
  std::atomic<int> now{0};
  std::atomic<int> most{0};
  std::atomic<long> started{0};
  std::atomic<int> stopped{0};  // runs that saw their stop token requested

  void enter() {
    const int n = now.fetch_add(1) + 1;
    int seen = most.load();
    while (n > seen && !most.compare_exchange_weak(seen, n)) {
    }
    started.fetch_add(1);
  }
  void leave() { now.fetch_sub(1); }
};

struct Call {
  std::string id;
  int work_ms = 20;

  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context& ctx) {
    auto& in_flight = ctx.service<InFlight>();
    in_flight.enter();
    std::this_thread::sleep_for(std::chrono::milliseconds(work_ms));
    in_flight.leave();
    return dmm::Result::done();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Call, id, work_ms)

constexpr int kSlots = 5;

dmm::KindOptions limited_kind() {
  auto options = fast_kind(4);  // 3 x 4 executors: more than the slots
  options.global_concurrency = kSlots;
  options.batch = 16;
  options.prefetch = 32;
  return options;
}

// Three buckets of one name, each with its own connections and worker id: as
// many worker processes, as far as PostgreSQL and NATS can tell.
struct Workers {
  std::string name;
  std::shared_ptr<InFlight> in_flight = std::make_shared<InFlight>();
  std::vector<std::unique_ptr<dmm::Bucket>> buckets;
  std::vector<std::unique_ptr<Runner>> runners;

  explicit Workers(std::string prefix) : name(unique_name(prefix)) {
    for (int i = 0; i < 3; ++i) {
      buckets.push_back(std::make_unique<dmm::Bucket>(open_bucket(name)));
      buckets.back()->provide(in_flight);
      buckets.back()->register_kind<Call>("call", limited_kind());
    }
  }
  void run() {
    for (auto& b : buckets) runners.push_back(std::make_unique<Runner>(*b));
  }
  void notify(int n) {
    std::vector<Call> calls;
    for (int i = 0; i < n; ++i) calls.push_back({.id = "call-" + std::to_string(i)});
    buckets.front()->notify_many(calls);
  }
  void wait_converged(int n) {
    wait_until([&] { return count_converged(name, "call") == n; }, 60s, "every call to be materialized",
               [n = name] { return describe_unconverged(n); });
  }
};

}  // namespace

TEST_CASE("global_concurrency caps the runs of a kind across processes, and every slot is used", "[limits]") {
  Workers w("limits-cap");
  constexpr int kCalls = 400;
  w.notify(kCalls);
  w.run();
  w.wait_converged(kCalls);
  INFO("most runs at once: " << w.in_flight->most.load());
  CHECK(w.in_flight->most.load() <= kSlots);
  CHECK(w.in_flight->most.load() == kSlots);
  CHECK(w.in_flight->started.load() >= kCalls);
  // Every slot is given back after its outcome's write-back (a statement of
  // its own, just after the write-back commits).
  pqxx::nontransaction tx(pg());
  CHECK(tx.exec_params1("SELECT count(*) FROM dmm.slot WHERE bucket = $1 AND kind = 'call'", w.name)[0].as<int>() ==
        kSlots);
  wait_until(
      [&] {
        return tx.exec_params1("SELECT count(*) FROM dmm.slot WHERE bucket = $1 AND held_until > now()", w.name)[0]
                   .as<int>() == 0;
      },
      5s, "every slot to be given back");
}

TEST_CASE("a global slot whose holder died is free again when its lease ends", "[limits]") {
  Workers w("limits-dead");
  // Slots held by the lease of a process that died: the rows its claim left.
  {
    pqxx::nontransaction tx(pg());
    tx.exec_params("INSERT INTO dmm.slot (bucket, kind, slot, matter_id, lease_epoch, held_until) "
                   "SELECT $1, 'call', g, -1, 1, now() + interval '2 s' FROM generate_series(0, $2 - 1) AS g "
                   "ON CONFLICT (bucket, kind, slot) DO UPDATE SET matter_id = -1, lease_epoch = 1, "
                   "held_until = EXCLUDED.held_until",
                   w.name, kSlots);
  }
  const auto held_from = std::chrono::steady_clock::now();
  constexpr int kCalls = 100;
  w.notify(kCalls);
  // What an operator sees meanwhile: every slot in use, and why a call waits.
  const auto stats = dmm::kind_stats(servers().postgres, w.name);
  REQUIRE(stats.size() == 1);
  CHECK(stats[0].slots == kSlots);
  CHECK(stats[0].slots_in_use == kSlots);
  CHECK(dmm::slots_text(stats[0]) == "5/5");
  const auto waiting = dmm::inspect({.postgres = servers().postgres, .bucket = w.name, .identity = "call-0"});
  REQUIRE(waiting.size() == 1);
  CHECK_THAT(dmm::explain(waiting[0]), Catch::Matchers::StartsWith("waiting for a global concurrency slot (5 of 5 "
                                                                   "in use)"));
  w.run();
  wait_until([&] { return w.in_flight->started.load() > 0; }, 20s, "a first call to start");
  CHECK(std::chrono::steady_clock::now() - held_from >= 1500ms);  // not before the dead leases ended (2 s, less slack)
  w.wait_converged(kCalls);
  CHECK(w.in_flight->most.load() == kSlots);
}

// Runs until asked to stop, and says when it was.
struct Long {
  std::string id;

  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context& ctx) {
    auto& in_flight = ctx.service<InFlight>();
    in_flight.enter();
    const auto until = std::chrono::steady_clock::now() + 20s;
    while (!ctx.stop_requested() && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(5ms);
    in_flight.leave();
    if (ctx.stop_requested()) in_flight.stopped.fetch_add(1);
    throw std::runtime_error("stopped");
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Long, id)

TEST_CASE("a run whose global slot was taken over is asked to stop, even if its matter was not", "[limits]") {
  const auto name = unique_name("limits-lost");
  auto in_flight = std::make_shared<InFlight>();
  auto bucket = open_bucket(name);
  bucket.provide(in_flight);
  auto options = limited_kind();
  options.lease_ttl = 900ms;  // a heartbeat every 300 ms
  bucket.register_kind<Long>("long", options);
  bucket.notify(Long{.id = "held"});
  Runner runner(bucket);
  wait_until([&] { return in_flight->started.load() == 1; }, 20s, "the run to start");
  // The slot's time ran out unseen (a paused process) and another claim took
  // it: the row names another lease now.
  {
    pqxx::nontransaction tx(pg());
    REQUIRE(tx.exec_params("UPDATE dmm.slot SET matter_id = -2, lease_epoch = 1 WHERE bucket = $1 AND kind = 'long' "
                           "AND matter_id IS NOT NULL",
                           name)
                .affected_rows() == 1);
  }
  wait_until([&] { return in_flight->stopped.load() == 1; }, 5s, "the run to be asked to stop");
}

// When each run's lease was taken (the rate limit counts a start at its
// lease), in µs of PostgreSQL's clock, across every bucket of a test.
struct StartTimes {
  std::string bucket;
  std::mutex mu;
  std::vector<std::int64_t> at;  // guarded by mu
};

struct Paced {
  std::string id;

  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context& ctx) {
    thread_local std::unique_ptr<pqxx::connection> conn;
    if (!conn) conn = std::make_unique<pqxx::connection>(servers().postgres);
    auto& times = ctx.service<StartTimes>();
    const auto leased = pqxx::nontransaction(*conn)
                            .exec_params1("SELECT (extract(epoch FROM leased_at) * 1e6)::bigint FROM dmm.matter "
                                          "WHERE bucket = $1 AND kind = $2 AND identity = $3",
                                          times.bucket, ctx.kind(), id)[0]
                            .as<std::int64_t>();
    std::lock_guard lock(times.mu);
    times.at.push_back(leased);
    return dmm::Result::done();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Paced, id)

TEST_CASE("rate_limit keeps the starts (leases) in any window of its period within count + burst, across processes",
          "[limits]") {
  const dmm::RateLimit rate{.count = 10, .per = 500ms, .burst = 3};
  const auto name = unique_name("limits-rate");
  auto times = std::make_shared<StartTimes>();
  times->bucket = name;
  std::vector<std::unique_ptr<dmm::Bucket>> buckets;
  for (int i = 0; i < 3; ++i) {
    buckets.push_back(std::make_unique<dmm::Bucket>(open_bucket(name)));
    buckets.back()->provide(times);
    auto options = fast_kind(4);
    options.rate_limit = rate;
    buckets.back()->register_kind<Paced>("paced", options);
  }
  std::vector<Paced> calls;
  for (int i = 0; i < 400; ++i) calls.push_back({.id = "paced-" + std::to_string(i)});
  buckets.front()->notify_many(calls);
  const auto from = std::chrono::steady_clock::now();
  std::vector<std::unique_ptr<Runner>> runners;
  for (auto& b : buckets) runners.push_back(std::make_unique<Runner>(*b));
  // 5 s at 20 per second: about 100 starts, far from all 400.
  wait_until([&] { return std::chrono::steady_clock::now() - from >= 5s; }, 10s, "5 s of work");
  // While the rate is spent, a waiting call says why. The rate grows a token
  // every 50 ms, and a claim spends it within kLimitPoll: polled, as a
  // look at the instant a token has grown and is not yet spent says
  // "waiting for a token".
  std::string why;
  wait_until(
      [&] {
        const auto waiting =
            dmm::inspect({.postgres = servers().postgres, .bucket = name, .phase = "pending", .limit = 1});
        why = waiting.empty() ? "(nothing pending)" : dmm::explain(waiting[0]);
        return why.rfind("rate limited (10 per 500ms, burst 3)", 0) == 0;
      },
      5s, "a pending call to say it is rate limited", [&] { return why; });
  runners.clear();
  const auto elapsed = std::chrono::steady_clock::now() - from;
  std::vector<std::int64_t> at;
  {
    std::lock_guard lock(times->mu);
    at = times->at;
  }
  std::sort(at.begin(), at.end());
  std::size_t most = 0;
  const auto per_us = std::chrono::duration_cast<std::chrono::microseconds>(rate.per).count();
  for (std::size_t i = 0, j = 0; i < at.size(); ++i) {
    while (at[i] - at[j] >= per_us) ++j;
    most = std::max(most, i - j + 1);
  }
  INFO(at.size() << " starts; most leased in one window of 500 ms: " << most);
  CHECK(most <= static_cast<std::size_t>(rate.count + rate.burst));
  // The rate was used, not just kept: 5 s at 20/s, less slack for the start.
  CHECK(at.size() >= 80);
  // And never more than the bucket allows over the whole run.
  const auto periods = static_cast<std::size_t>(elapsed / rate.per) + 1;
  CHECK(at.size() <= static_cast<std::size_t>(rate.burst) + periods * static_cast<std::size_t>(rate.count));
}

TEST_CASE("a global_concurrency out of range is refused, naming the kind", "[limits][bad-input]") {
  auto bucket = open_bucket(unique_name("limits-bad"));
  auto options = fast_kind();
  options.global_concurrency = -1;
  CHECK_THROWS_AS(bucket.register_kind<Call>("call", options), dmm::InvalidArgument);
  CHECK_THROWS_WITH(bucket.register_kind<Call>("call", options),
                    Catch::Matchers::Contains("kind 'call'") && Catch::Matchers::Contains("global_concurrency is -1") &&
                        Catch::Matchers::Contains("0..100000"));
  options.global_concurrency = 100'001;
  CHECK_THROWS_AS(bucket.register_kind<Call>("call", options), dmm::InvalidArgument);
}

TEST_CASE("a rate_limit with a zero period, a negative count or no burst is refused, naming the kind",
          "[limits][bad-input]") {
  auto bucket = open_bucket(unique_name("limits-bad-rate"));
  auto with = [](dmm::RateLimit rate) {
    auto options = fast_kind();
    options.rate_limit = rate;
    return options;
  };
  CHECK_THROWS_WITH(bucket.register_kind<Call>("call", with({.count = 10, .per = 0ms})),
                    Catch::Matchers::Contains("kind 'call'") && Catch::Matchers::Contains("rate_limit.per is 0ms"));
  CHECK_THROWS_WITH(bucket.register_kind<Call>("call", with({.count = -1})),
                    Catch::Matchers::Contains("rate_limit.count is -1"));
  CHECK_THROWS_WITH(bucket.register_kind<Call>("call", with({.count = 10, .burst = 0})),
                    Catch::Matchers::Contains("rate_limit.burst is 0"));
  CHECK_THROWS_AS(bucket.register_kind<Call>("call", with({.count = 10, .per = 0ms})), dmm::InvalidArgument);
}
