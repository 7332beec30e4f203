// Self-expiry (docs/DESIGN.md, "Self-expiry") on real servers: a worker whose
// link to PostgreSQL is frozen (a loopback proxy that stops forwarding and
// sends no RST, as in a real partition) asks its running attempt to stop
// before its lease can end, so that a materializer honouring its stop token
// never overlaps with the worker that takes the matter over; after the link
// heals, the cut-off worker works again.
#include <catch2/catch.hpp>

#include <condition_variable>

#include "harness.hpp"
#include "engine/testing.hpp"
#include "proxy.hpp"

using namespace dmm_test;
using Clock = std::chrono::steady_clock;

namespace {

// What the two workers did with x.
struct Timeline {
  std::mutex mu;
  std::condition_variable cv;
  std::optional<Clock::time_point> stop_requested;  // of x's run on the frozen worker
  bool started = false;                              // x's run on the frozen worker began
  bool frozen_done = false;                          // and returned
  std::optional<Clock::time_point> other_started;    // x's first run on the other worker
  bool overlapped = false;                           // it began while the frozen one still ran x
};

// Which worker a bucket is (each bucket provides its own).
struct WorkerName {
  std::string name;
};

// A materializer that honours its stop token: x on worker "frozen" runs until
// asked to stop; every other run returns at once.
struct Held {
  std::string id;
  int seq = 0;
  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context& ctx) {
    auto& t = ctx.service<Timeline>();
    const auto& me = ctx.service<WorkerName>().name;
    const auto start = Clock::now();
    if (me == "frozen" && id == "x") {
      {
        std::lock_guard lock(t.mu);
        t.started = true;
      }
      t.cv.notify_all();
      std::mutex m;
      std::condition_variable_any cv;
      std::unique_lock lock(m);
      cv.wait(lock, ctx.stop_token(), [] { return false; });
      std::lock_guard tl(t.mu);
      t.stop_requested = Clock::now();
      t.frozen_done = true;
    }
    std::lock_guard lock(t.mu);
    if (me == "other" && id == "x" && !t.other_started) {
      t.other_started = start;
      t.overlapped = t.started && !t.frozen_done;
    }
    return dmm::Result::done();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Held, id, seq)

double ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

}  // namespace

namespace {

// What a freeze of the holder's link to PostgreSQL for three lease TTLs
// showed.
struct FreezeResult {
  bool overlapped = false;               // the other worker started x while the frozen one ran it
  std::optional<double> stop_after_ms;   // the frozen run's stop request, after the freeze
  bool converged_after_heal = false;     // the healed worker then materialized a matter of its own
};

FreezeResult freeze_a_holder() {
  const auto name = unique_name("partition");
  const auto pg_url = servers().postgres;
  // The test PostgreSQL's address, for the proxy in front of it.
  pqxx::connection probe(pg_url);
  REQUIRE(probe.port());
  Proxy proxy(probe.hostname() ? probe.hostname() : "127.0.0.1", std::stoi(probe.port()));

  auto timeline = std::make_shared<Timeline>();
  auto kind = fast_kind(2);
  kind.lease_ttl = 1500ms;  // margin: a third, 500 ms; heartbeats every 500 ms

  // The worker cut off: its PostgreSQL connections go through the proxy.
  auto frozen = open_bucket(name, [&](dmm::BucketOptions& o) {
    o.postgres = with_address(pg_url, "127.0.0.1", proxy.port());
    o.worker_id = "frozen";
  });
  frozen.provide(timeline);
  frozen.provide(std::make_shared<WorkerName>(WorkerName{"frozen"}));
  frozen.register_kind<Held>("held", kind);
  auto other = open_bucket(name, [&](dmm::BucketOptions& o) { o.worker_id = "other"; });
  other.provide(timeline);
  other.provide(std::make_shared<WorkerName>(WorkerName{"other"}));
  other.register_kind<Held>("held", kind);

  other.notify(Held{.id = "x", .seq = 1});
  auto frozen_runner = std::make_unique<Runner>(frozen);
  {
    std::unique_lock lock(timeline->mu);
    REQUIRE(timeline->cv.wait_for(lock, 20s, [&] { return timeline->started; }));
  }
  const auto frozen_at = Clock::now();
  proxy.freeze();
  Runner other_runner(other);

  // The other worker takes x over once the lease ends.
  wait_until(
      [&] {
        std::lock_guard lock(timeline->mu);
        return timeline->other_started.has_value();
      },
      20s, "the other worker to take x over");
  // Frozen for three TTLs in all.
  while (Clock::now() - frozen_at < 3 * kind.lease_ttl) std::this_thread::sleep_for(50ms);
  proxy.heal();
  REQUIRE(proxy.connections() > 0);

  FreezeResult result;
  {
    std::lock_guard lock(timeline->mu);
    result.overlapped = timeline->overlapped;
    if (timeline->stop_requested) result.stop_after_ms = ms(*timeline->stop_requested - frozen_at);
    INFO("the other worker started x " << ms(*timeline->other_started - frozen_at) << " ms after the freeze");
  }
  // Healed, the cut-off worker works again: a matter that only it can take
  // (the other stops first) converges.
  other_runner.stop();
  other.notify(Held{.id = "y", .seq = 1});
  wait_until([&] { return count_converged(name, "held") == 2; }, 30s, "x and y to converge after the heal");
  result.converged_after_heal = true;
  frozen_runner.reset();
  return result;
}

}  // namespace

TEST_CASE("a holder whose link to PostgreSQL is frozen stops before its lease can be taken over",
          "[partition]") {
  const auto r = freeze_a_holder();
  CHECK_FALSE(r.overlapped);
  // Asked to stop by its own clock, within a TTL of the freeze (the last
  // heartbeat that got through was sent before it).
  REQUIRE(r.stop_after_ms);
  CHECK(*r.stop_after_ms < 1500);
  CHECK(r.converged_after_heal);
}

TEST_CASE("without self-expiry (a mutation check) the frozen holder overlaps with the next one", "[partition]") {
  dmm::detail::testing::self_expiry_off = true;
  const auto r = freeze_a_holder();
  dmm::detail::testing::self_expiry_off = false;
  CHECK(r.overlapped);
}
