#include "protocol/backoff.hpp"

#include <algorithm>
#include <cmath>

#include "dmm/errors.hpp"

namespace dmm::detail {

milliseconds backoff_delay(const Backoff& backoff, int attempt, double unit_random) {
  const double max = static_cast<double>(backoff.max.count());
  const double exponent = std::max(0, attempt - 1);
  // Capped before jitter so a huge attempt count cannot overflow.
  double base = std::min(max, static_cast<double>(backoff.initial.count()) * std::pow(backoff.multiplier, exponent));
  const double factor = 1.0 + backoff.jitter * (2.0 * std::clamp(unit_random, 0.0, 1.0) - 1.0);
  return milliseconds(static_cast<milliseconds::rep>(std::clamp(base * factor, 0.0, max)));
}


}  // namespace dmm::detail
