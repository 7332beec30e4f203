// The web view's chart: samples of the bucket (matters by phase) and of this
// process's counters (materializations, errors) kept in memory for the last
// 15 minutes, drawn by the server as SVG (no script, no library).
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace dmm::detail {

inline constexpr std::chrono::minutes kChartWindow{15};

struct ChartSample {
  std::chrono::system_clock::time_point at;
  // Matters of the bucket by phase; nullopt when PostgreSQL could not be read.
  std::optional<std::map<std::string, std::int64_t>> phases;
  std::uint64_t materializations = 0;  // attempts finished in this process so far (counter)
  std::uint64_t errors = 0;            // of them, failed ones (outcomes retry and failed)
};

// The samples of the last kChartWindow, oldest first. Thread-safe.
class SampleRing {
 public:
  void push(ChartSample sample);
  std::vector<ChartSample> snapshot() const;

 private:
  mutable std::mutex mu_;
  std::deque<ChartSample> samples_;  // guarded by mu_; none older than kChartWindow before the newest
};

// Two inline SVG charts over [now - kChartWindow, now]: matters by phase
// (id "chart-phases") and materializations/s and errors/s (id "chart-rates",
// rates between consecutive samples). Each series is a polyline with
// data-series and a legend entry with its latest value.
std::string render_charts(const std::vector<ChartSample>& samples, std::chrono::system_clock::time_point now,
                          std::chrono::milliseconds sample_every);

}  // namespace dmm::detail
