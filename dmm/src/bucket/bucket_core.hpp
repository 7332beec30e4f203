// The engine behind a Bucket handle: connections, registered kinds and their
// WorkStreams. Shared by the Bucket and every thread working for it.
#pragma once

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <spdlog/logger.h>
#include <string>
#include <typeindex>

#include "dmm/detail/core.hpp"
#include "dmm/options.hpp"
#include "dmm/work_stream.hpp"
#include "engine/metrics.hpp"
#include "engine/notify_group.hpp"
#include "store/pg.hpp"
#include "store/matters.hpp"
#include "tokens/tokens.hpp"

namespace dmm::detail {

struct Kind {
  std::string name;
  KindOptions options;
  KindHooks hooks;
  std::unique_ptr<WorkStream> stream;
};

class HttpServer;

class BucketCore {
 public:
  explicit BucketCore(BucketOptions options);

  // Constant after construction.
  const BucketOptions options;
  const std::shared_ptr<spdlog::logger> logger;
  const std::string worker_id;

  Metrics metrics;             // thread-safe
  PgPool pool;                 // thread-safe
  std::unique_ptr<Nats> nats;  // thread-safe; set once in the constructor
  NotifyGroups notify_groups;  // thread-safe

  // The registered kind `name`; InvalidArgument if unknown.
  Kind& kind(const std::string& name);
  // Every registered kind, in name order.
  std::vector<Kind*> kinds();

  // Publishes tokens owed after a commit (failures only logged).
  void publish(const std::string& kind, const std::vector<std::int64_t>& ids) { nats->publish(kind, ids); }
  void publish(const std::vector<TokenOwed>& owed);

  // Whether this sweeper should prune the bucket's attempt history now: true
  // for one caller per round, the first to come `every` after the last round.
  // The statement covers the whole bucket and scans dmm.attempt (no index on
  // age: it would cost every write-back), so the kinds of a bucket take turns.
  bool take_prune_turn(std::chrono::steady_clock::time_point now, std::chrono::steady_clock::duration every) {
    auto due = next_prune.load();
    const auto at = now.time_since_epoch().count();
    return at >= due && next_prune.compare_exchange_strong(due, (now + every).time_since_epoch().count());
  }
  std::atomic<std::chrono::steady_clock::rep> next_prune{0};  // take_prune_turn's, in steady_clock ticks

  std::mutex mu;                                                // protects the members below
  std::map<std::string, std::unique_ptr<Kind>> kinds_by_name;  // guarded by mu
  std::map<std::type_index, std::string> kind_names;            // guarded by mu
  std::map<std::type_index, std::shared_ptr<void>> services;    // guarded by mu
  // Declared last: stops serving before anything it reads is destroyed.
  std::shared_ptr<HttpServer> http;  // guarded by mu; set once by serve_http
};

}  // namespace dmm::detail
