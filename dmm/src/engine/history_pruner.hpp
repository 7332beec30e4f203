// The bucket's attempt-history pruner: deletes history older than
// BucketOptions::history_retention. One per bucket and process; the kinds'
// sweepers offer it their idle time and one of them runs it per round.
#pragma once

#include <atomic>
#include <chrono>
#include <pqxx/pqxx>
#include <spdlog/logger.h>
#include <string>

namespace dmm::detail {

class HistoryPruner {
 public:
  HistoryPruner(std::string bucket, std::chrono::milliseconds retention, spdlog::logger& log);

  // Prunes on `conn` if a round is due (not before a few seconds after start,
  // then every kEvery), else returns at once. Thread-safe: of concurrent
  // callers, one runs the round.
  void run_if_due(pqxx::connection& conn);

  // The statement scans dmm.attempt (no index on age: it would cost every
  // write-back), so it runs rarely; the retention is days.
  static constexpr auto kEvery = std::chrono::minutes(10);

 private:
  bool take_turn(std::chrono::steady_clock::time_point now);

  const std::string bucket_;
  const std::chrono::milliseconds retention_;
  spdlog::logger& log_;
  std::atomic<std::chrono::steady_clock::rep> next_round_;  // steady_clock ticks
};

}  // namespace dmm::detail
