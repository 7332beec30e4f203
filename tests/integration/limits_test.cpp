// Global limits of a kind across processes (docs/DESIGN.md, "Global
// concurrency") on real servers: never more runs at once than
// KindOptions::global_concurrency, every slot used, a slot of a lease that
// ended without an outcome free again when the lease runs out.
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
  // Every slot was given back with its outcome.
  pqxx::nontransaction tx(pg());
  CHECK(tx.exec_params1("SELECT count(*) FROM dmm.slot WHERE bucket = $1 AND kind = 'call'", w.name)[0].as<int>() ==
        kSlots);
  CHECK(tx.exec_params1("SELECT count(*) FROM dmm.slot WHERE bucket = $1 AND held_until > now()", w.name)[0]
            .as<int>() == 0);
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
