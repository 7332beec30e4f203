// A logger for lines that repeat while something stays broken (a server down
// makes every iteration of a loop fail the same way): at most one line per
// interval, the rest dropped. Thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <limits>
#include <spdlog/logger.h>
#include <utility>

namespace dmm::detail {

class RateLimitedLog {
 public:
  explicit RateLimitedLog(spdlog::logger& log, std::chrono::milliseconds every = std::chrono::seconds(5))
      : log_(log), every_(every) {}

  template <class... Args>
  void warn(fmt::format_string<Args...> f, Args&&... args) {
    if (take()) log_.warn(f, std::forward<Args>(args)...);
  }
  template <class... Args>
  void error(fmt::format_string<Args...> f, Args&&... args) {
    if (take()) log_.error(f, std::forward<Args>(args)...);
  }

  // True for the first caller after each interval: it may log now.
  bool take() {
    const auto now = std::chrono::steady_clock::now().time_since_epoch().count();
    auto last = last_.load(std::memory_order_relaxed);
    const auto every = std::chrono::duration_cast<std::chrono::steady_clock::duration>(every_).count();
    return (last == kNever || now - last >= every) && last_.compare_exchange_strong(last, now);
  }

 private:
  static constexpr std::chrono::steady_clock::rep kNever = std::numeric_limits<std::chrono::steady_clock::rep>::min();
  spdlog::logger& log_;
  const std::chrono::milliseconds every_;
  std::atomic<std::chrono::steady_clock::rep> last_{kNever};
};

}  // namespace dmm::detail
