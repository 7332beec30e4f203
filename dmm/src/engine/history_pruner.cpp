#include "engine/history_pruner.hpp"

#include "store/history.hpp"

namespace dmm::detail {
namespace {

constexpr int kBatch = 5000;    // rows per statement
constexpr int kMaxBatches = 20;  // per round: the rest waits for the next

}  // namespace

HistoryPruner::HistoryPruner(std::string bucket, std::chrono::milliseconds retention, spdlog::logger& log)
    : bucket_(std::move(bucket)),
      retention_(retention),
      log_(log),
      next_round_((std::chrono::steady_clock::now() + std::chrono::seconds(5)).time_since_epoch().count()) {}

bool HistoryPruner::take_turn(std::chrono::steady_clock::time_point now) {
  auto due = next_round_.load();
  return now.time_since_epoch().count() >= due &&
         next_round_.compare_exchange_strong(due, (now + kEvery).time_since_epoch().count());
}

void HistoryPruner::run_if_due(pqxx::connection& conn) {
  if (!take_turn(std::chrono::steady_clock::now())) return;
  std::int64_t pruned = 0;
  for (int round = 0; round < kMaxBatches; ++round) {
    const auto n = prune_history(conn, bucket_, retention_, kBatch);
    pruned += n;
    if (n < kBatch) break;
  }
  if (pruned > 0) log_.debug("bucket '{}': pruned {} attempt(s) from the history", bucket_, pruned);
}

}  // namespace dmm::detail
