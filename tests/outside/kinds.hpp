// The kinds flow_check's checks run: tiny materializers that record their
// runs in the RunLog, and the options each check registers them with, the same
// in the checker and in every worker process.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <dmm/dmm.hpp>
#include <string>
#include <thread>

#include "run_log.hpp"

namespace flow_check {

using namespace std::chrono_literals;
using std::chrono::milliseconds;

// A call to a downstream API that takes at most kSlots at once: records its
// start and end.
struct Slotted {
  std::string id;
  int work_ms = 40;

  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context& ctx) {
    auto& runs = ctx.service<RunLog>();
    const auto run = runs.start(id);
    std::this_thread::sleep_for(milliseconds(work_ms));
    runs.end(run);
    return dmm::Result::done();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Slotted, id, work_ms)

// A call to a downstream API with a quota: records when its lease was taken
// (the rate limit counts a start at its lease), as dmm::inspect shows it.
struct Paced {
  std::string id;

  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context& ctx) {
    auto& runs = ctx.service<RunLog>();
    const auto seen = dmm::inspect(
        {.postgres = runs.postgres(), .bucket = runs.bucket(), .kind = ctx.kind(), .identity = id, .limit = 1});
    runs.start(id, seen.empty() ? "" : seen.front().leased_at);
    return dmm::Result::done();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Paced, id)

// A job of a bulk backlog, or an urgent one: records its start.
struct Job {
  std::string id;
  int work_us = 0;

  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context& ctx) {
    ctx.service<RunLog>().start(id);
    std::this_thread::sleep_for(std::chrono::microseconds(work_us));
    return dmm::Result::done();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Job, id, work_us)

// A call that always fails: records each call, then throws an error naming it.
struct Doomed {
  std::string id;

  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context& ctx) {
    ctx.service<RunLog>().start(id);
    throw std::runtime_error(id + " refused call " + std::to_string(ctx.attempt()));
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Doomed, id)

// A job of one shop's orders: fair by its tenant() member (the shop), records
// its start. Its identity starts with its shop ("<shop>-<n>").
struct Order {
  std::string id;
  std::string shop;
  int work_us = 0;

  std::string identity() const { return id; }
  std::string tenant() const { return shop; }
  dmm::Result materialize(dmm::Context& ctx) {
    ctx.service<RunLog>().start(id);
    std::this_thread::sleep_for(std::chrono::microseconds(work_us));
    return dmm::Result::done();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Order, id, shop, work_us)

// A job of one owner: fair by KindOptions::fairness_key (no tenant() member),
// records its start. Its identity starts with its owner ("<owner>-<n>").
struct Task {
  std::string id;
  std::string owner;
  int work_us = 0;

  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context& ctx) {
    ctx.service<RunLog>().start(id);
    std::this_thread::sleep_for(std::chrono::microseconds(work_us));
    return dmm::Result::done();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Task, id, owner, work_us)

// A call that must not run twice at once: records its start and end. In the
// worker started with FLOW_CHECK_ROLE=holder it runs until its stop token is
// requested (it honours it), elsewhere it returns at once.
struct Held {
  std::string id;

  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context& ctx) {
    static const bool holder = std::getenv("FLOW_CHECK_ROLE") && std::string(std::getenv("FLOW_CHECK_ROLE")) == "holder";
    auto& runs = ctx.service<RunLog>();
    const auto run = runs.start(id);
    if (holder) {
      std::mutex m;
      std::condition_variable_any cv;
      std::unique_lock lock(m);
      cv.wait_for(lock, ctx.stop_token(), 60s, [] { return false; });
    }
    runs.end(run);
    return dmm::Result::done();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Held, id)

// The settings of each check.
constexpr int kSlots = 5;  // global_concurrency
constexpr int kSlotWorkers = 3;
constexpr int kSlotCalls = 150;

constexpr dmm::RateLimit kRate{.count = 20, .per = 1000ms, .burst = 5};
constexpr int kRateWorkers = 3;
constexpr auto kRateSpan = 6s;  // how long the rate is watched

constexpr int kPrefetch = 64;
constexpr int kJobWorkers = 2;
constexpr int kBacklog = 30'000;

constexpr int kMaxAttempts = 3;
constexpr int kDoomedWorkers = 2;
constexpr int kDoomed = 4;

// fairness: a large shop's backlog notified before a small shop's orders
// ("order", by tenant()), and many owners' tasks notified owner by owner
// ("task", by fairness_key).
constexpr int kFairWorkers = 2;
constexpr int kOrderBatch = 32;
constexpr int kOrderPrefetch = 64;
constexpr int kBigOrders = 20'000;
constexpr int kSmallOrders = 10;
// One process: each process rotates on its own (docs/DESIGN.md, "Fairness"),
// so P processes in step serve each key P times a round.
constexpr int kRotationWorkers = 1;
constexpr int kTaskBatch = 8;
constexpr int kTaskPrefetch = 16;
constexpr int kOwners = 60;
constexpr int kTasksEach = 10;

// partition: the holder runs kHeld matters at once when its link freezes.
constexpr int kHeld = 8;
constexpr milliseconds kHeldLease = 2000ms;

// Registers the kind of `check` (global_concurrency, rate_limit, priority,
// retry_cap; fairness registers two) with its options; std::invalid_argument
// for another name.
void register_kind(dmm::Bucket& bucket, const std::string& check);

}  // namespace flow_check
