// What a kind's engine depends on, handed in explicitly by the bucket (its
// wiring, bucket/bucket_core.hpp) instead of the bucket itself.
#pragma once

#include <cstdint>
#include <spdlog/logger.h>
#include <string>
#include <vector>

#include "dmm/detail/core.hpp"
#include "dmm/options.hpp"
#include "engine/history_pruner.hpp"
#include "engine/metrics.hpp"
#include "store/matters.hpp"
#include "tokens/tokens.hpp"

namespace dmm::detail {

// A registered kind as the engine sees it. Constant after registration.
struct KindSpec {
  std::string name;
  KindOptions options;
  KindHooks hooks;
};

// Every member outlives the engines that use it; all are thread-safe.
struct EngineDeps {
  const BucketOptions& options;  // constant after Bucket::open
  const std::string& worker_id;  // constant after Bucket::open
  spdlog::logger* logger;
  Nats* nats;
  Metrics& metrics;
  HistoryPruner& pruner;
  // Handed to each Context, for ctx.notify/matter/ready/service; the engine
  // itself never uses it.
  BucketCore* api;

  // Publishes the tokens owed after a commit (failures only logged).
  void publish(const std::string& kind, Priority priority, const std::vector<std::int64_t>& ids) const {
    nats->publish(kind, priority, ids);
  }
  void publish(const std::vector<TokenOwed>& owed) const;
};

// Publishes the tokens `owed`, grouped by kind and class, as few as possible
// (failures only logged). For the engine and the Bucket API alike.
void publish_owed(Nats& nats, const std::vector<TokenOwed>& owed);

}  // namespace dmm::detail
