// Fairness keys (KindOptions::fairness_key, a type's tenant(); docs/DESIGN.md
// "Fairness") on real servers: a small tenant is not starved by a large
// one, claims rotate across more keys than a claim takes, a fair kind still
// converges after its tokens are lost, and a bad key is refused with nothing
// stored.
#include <catch2/catch.hpp>

#include <atomic>
#include <set>

#include "harness.hpp"

using namespace dmm_test;

namespace {

// The order in which matters started, across every process of a test.
struct StartLog {
  std::mutex mu;
  std::vector<std::string> tenants;             // guarded by mu: the tenant of each start
  std::map<std::string, std::size_t> first_at;  // guarded by mu: identity -> index of its first start

  void start(const std::string& tenant, const std::string& id) {
    std::lock_guard lock(mu);
    first_at.try_emplace(id, tenants.size());
    tenants.push_back(tenant);
  }
  std::size_t count() {
    std::lock_guard lock(mu);
    return tenants.size();
  }
};

// Fair by its tenant() member.
struct Order {
  std::string id;
  std::string shop;
  int work_us = 0;

  std::string identity() const { return id; }
  std::string tenant() const { return shop; }
  dmm::Result materialize(dmm::Context& ctx) {
    ctx.service<StartLog>().start(shop, id);
    if (work_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(work_us));
    return dmm::Result::done();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Order, id, shop, work_us)

// Fair by KindOptions::fairness_key (no tenant() member).
struct Task {
  std::string id;
  std::string owner;
  int work_us = 0;

  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context& ctx) {
    ctx.service<StartLog>().start(owner, id);
    if (work_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(work_us));
    return dmm::Result::done();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Task, id, owner, work_us)

dmm::KindOptions by_owner(dmm::KindOptions options) {
  options.fairness_key = [](const nlohmann::json& state) {
    auto owner = state.at("owner").get<std::string>();
    if (owner == "boom") throw std::runtime_error("no such owner");
    if (owner == "latin1") return std::string("caf\xe9");  // not UTF-8
    return owner;
  };
  return options;
}

}  // namespace

TEST_CASE("a tenant with 10 due matters starts within the first batches behind one with 100,000", "[fairness]") {
  constexpr int kBig = 100'000;
  constexpr int kSmall = 10;
  constexpr int kProcesses = 2;
  const auto name = unique_name("fair-big");
  auto log = std::make_shared<StartLog>();
  auto options = fast_kind(4);
  options.batch = 64;
  std::vector<std::unique_ptr<dmm::Bucket>> buckets;
  for (int i = 0; i < kProcesses; ++i) {
    buckets.push_back(std::make_unique<dmm::Bucket>(open_bucket(name)));
    buckets.back()->provide(log);
    buckets.back()->register_kind<Order>("order", options);
  }
  // The large tenant's tokens come first in the stream, all 100,000 of its
  // matters before any of the small one's.
  std::vector<Order> big;
  for (int i = 0; i < kBig; ++i) big.push_back({.id = "big-" + std::to_string(i), .shop = "big", .work_us = 200});
  buckets.front()->notify_many(big);
  std::vector<Order> small;
  for (int i = 0; i < kSmall; ++i) small.push_back({.id = "small-" + std::to_string(i), .shop = "small"});
  buckets.front()->notify_many(small);

  std::vector<std::unique_ptr<Runner>> runners;
  for (auto& b : buckets) runners.push_back(std::make_unique<Runner>(*b));
  wait_until([&] { return count_converged(name, "order") >= kSmall && log->count() > 0; }, 60s,
             "the small tenant's matters to be done", [&] { return describe_unconverged(name); });
  wait_until(
      [&] {
        std::lock_guard lock(log->mu);
        return std::all_of(small.begin(), small.end(), [&](const Order& o) { return log->first_at.count(o.id); });
      },
      60s, "every matter of the small tenant to start");
  // A claim takes at most a batch; each process holds at most its prefetch
  // (2 x batch). "The first few batches": what both processes can hold, and
  // one batch more.
  const std::size_t bound = static_cast<std::size_t>(kProcesses * 2 * options.batch + options.batch);
  std::lock_guard lock(log->mu);
  for (const auto& o : small) {
    INFO(o.id << " started as number " << log->first_at[o.id] << " of " << log->tenants.size());
    CHECK(log->first_at[o.id] < bound);
  }
}

TEST_CASE("claims rotate across more fairness keys than one claim takes", "[fairness]") {
  constexpr int kKeys = 120;
  constexpr int kEach = 30;
  const auto name = unique_name("fair-rot");
  auto log = std::make_shared<StartLog>();
  auto bucket = open_bucket(name);
  bucket.provide(log);
  auto options = by_owner(fast_kind(2));
  options.batch = 16;
  bucket.register_kind<Task>("task", options);
  // Notified key by key, so that token order alone would serve them one
  // key after another.
  std::vector<Task> tasks;
  for (int k = 0; k < kKeys; ++k)
    for (int i = 0; i < kEach; ++i)
      tasks.push_back({.id = fmt::format("k{:03}-{:02}", k, i), .owner = fmt::format("owner-{:03}", k), .work_us = 500});
  bucket.notify_many(tasks);

  Runner runner(bucket);
  wait_until([&] { return count_converged(name, "task") == kKeys * kEach; }, 120s, "every task to be done",
             [&] { return describe_unconverged(name); });
  // Every key had its first start before any key had its third: the claims
  // went round all 120 keys, 16 matters at a time, not only the first ones.
  std::lock_guard lock(log->mu);
  std::map<std::string, int> seen;
  std::size_t all_started_by = 0;
  for (std::size_t i = 0; i < log->tenants.size(); ++i) {
    if (++seen[log->tenants[i]] == 1 && seen.size() == kKeys) {
      all_started_by = i + 1;
      break;
    }
  }
  INFO("all " << kKeys << " keys had started after " << all_started_by << " starts");
  REQUIRE(all_started_by > 0);
  CHECK(all_started_by <= static_cast<std::size_t>(2 * kKeys));
}

TEST_CASE("a fair kind converges after its tokens are lost", "[fairness]") {
  const auto name = unique_name("fair-lost");
  auto log = std::make_shared<StartLog>();
  auto bucket = open_bucket(name);
  bucket.provide(log);
  bucket.register_kind<Task>("task", by_owner(fast_kind(4)));
  std::vector<Task> tasks;
  for (int i = 0; i < 500; ++i) tasks.push_back({.id = "t" + std::to_string(i), .owner = "o" + std::to_string(i % 7)});
  bucket.notify_many(tasks);
  Nats nats(servers().nats);
  nats.purge_stream("DMM_" + name);  // every token lost: only the kicks are left

  Runner runner(bucket);
  wait_until([&] { return count_converged(name, "task") == 500; }, 60s, "every task to be done after the purge",
             [&] { return describe_unconverged(name); });
  CHECK(count_matters(name, "task", "fair_key IS NULL") == 0);
  pqxx::nontransaction tx(pg());
  CHECK(tx.exec1("SELECT count(*) FROM dmm.kick WHERE bucket = " + tx.quote(name))[0].as<int>() == 0);
}

TEST_CASE("an empty, overlong or unreadable fairness key is refused and nothing is stored", "[fairness]") {
  const auto name = unique_name("fair-bad");
  auto bucket = open_bucket(name);
  bucket.provide(std::make_shared<StartLog>());
  bucket.register_kind<Order>("order", fast_kind());
  bucket.register_kind<Task>("task", by_owner(fast_kind()));
  bucket.notify(Order{.id = "kept", .shop = "a"});
  const auto before = stored_snapshot(name);

  const auto refused = [&](const std::function<void()>& call, const std::string& says) {
    try {
      call();
      FAIL("no error; expected one saying " << says);
    } catch (const dmm::InvalidArgument& e) {
      const std::string what = e.what();
      INFO(what);
      CHECK(what.find(says) != std::string::npos);
      CHECK(what.find("fairness") != std::string::npos);
    }
  };
  refused([&] { bucket.notify(Order{.id = "empty", .shop = ""}); }, "kind 'order' identity 'empty'");
  refused([&] { bucket.notify(Order{.id = "long", .shop = std::string(257, 'x')}); }, "257 bytes");
  refused([&] { bucket.notify_many(std::vector<Order>{{.id = "fine", .shop = "a"}, {.id = "bad", .shop = ""}}); },
          "identity 'bad'");
  refused([&] { bucket.notify(Task{.id = "x", .owner = "latin1"}); }, "not valid UTF-8");
  refused([&] { bucket.notify(Task{.id = "boom", .owner = "boom"}); }, "no such owner");
  {
    pqxx::work tx(pg());
    refused([&] { bucket.notify(tx, Order{.id = "in-txn", .shop = ""}); }, "identity 'in-txn'");
  }
  CHECK(stored_snapshot(name) == before);
  // A 256-byte key is fine.
  bucket.notify(Order{.id = "longest", .shop = std::string(256, 'x')});
  CHECK(query_phase(name, "order", "longest") == "pending");
}
