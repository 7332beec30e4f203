// Counters of one process for /metrics (Prometheus text format): per kind,
// outcomes, a duration histogram, in-flight attempts, retries, leases lost and
// token errors. Lock-free updates (atomics) from the engine's threads; the
// map of kinds is guarded by a mutex and its entries never move or die.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <optional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "protocol/vocabulary.hpp"

namespace dmm::detail {

// Upper bounds (seconds) of the duration histogram's buckets; +Inf is implied.
inline constexpr std::array<double, 14> kDurationBuckets = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                            0.5,   1,     2.5,  5,     10,   30,  60};

// What a step of dmm::Steps came to (/metrics dmm_steps_total{outcome}).
inline constexpr std::array<std::string_view, 5> kStepOutcomes = {"done", "retried", "failed", "rolled_back",
                                                                  "rollback_failed"};

struct KindMetrics {
  std::array<std::atomic<std::uint64_t>, kOutcomes.size()> outcomes{};
  std::array<std::atomic<std::uint64_t>, kDurationBuckets.size() + 1> duration_buckets{};  // not cumulative
  std::atomic<std::uint64_t> duration_sum_us{0};
  std::atomic<std::int64_t> in_flight{0};
  std::atomic<std::uint64_t> retries{0};          // attempts after a failed one (attempt > 1)
  std::atomic<std::uint64_t> leases_lost{0};      // expired or taken over by another worker
  std::atomic<std::uint64_t> lease_expiry_stops{0};  // attempts asked to stop: their lease was not renewed in time
  std::atomic<std::uint64_t> publish_errors{0};   // token publishes NATS refused or never confirmed
  std::atomic<std::uint64_t> ack_errors{0};
  std::atomic<std::uint64_t> notifies_grouped{0};  // single notifies written with others (notify_group.hpp)

  // Step outcomes of dmm::Steps, by kStepOutcomes.
  std::array<std::atomic<std::uint64_t>, 5> steps{};
  // Counts one step outcome; an unknown name is not counted.
  void count_step(std::string_view outcome);

  // One finished attempt: its outcome (index_of(OutcomeKind)) and duration.
  void observe(std::size_t outcome, std::int64_t duration_us, int attempt);
};

// Values read from PostgreSQL at scrape time, per kind.
struct KindGauges {
  std::map<std::string, std::int64_t> matters_by_phase;
  std::int64_t due = 0;      // work owed now (due_at <= now())
  std::map<std::string, std::int64_t> due_by_priority;  // of `due`, by class name
  std::int64_t gave_up = 0;  // failed after KindOptions::max_attempts
  std::int64_t slots = 0;    // global concurrency slots (0: no global limit)
  std::int64_t slots_in_use = 0;
  std::optional<double> rate_available;  // starts the rate limit allows now; none without one
};

class Metrics {
 public:
  // The counters of `kind`, created on first use; the reference stays valid
  // as long as this registry.
  KindMetrics& kind(const std::string& kind);
  // Prometheus text exposition (version 0.0.4) of every kind's counters plus
  // `gauges` (kinds only in `gauges` are included too).
  std::string render(const std::string& bucket, const std::map<std::string, KindGauges>& gauges);

 private:
  std::mutex mu_;
  std::map<std::string, std::unique_ptr<KindMetrics>> kinds_;  // guarded by mu_; entries never removed
};

}  // namespace dmm::detail
