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

void validate_backoff(const Backoff& b, const std::string& kind) {
  auto bad = [&](const std::string& what) {
    throw InvalidArgument("kind '" + kind + "': backoff." + what);
  };
  if (b.initial.count() <= 0) bad("initial must be positive (e.g. 200ms)");
  if (b.max < b.initial) bad("max must be at least backoff.initial");
  if (!(b.multiplier >= 1.0) || !std::isfinite(b.multiplier)) bad("multiplier must be a finite number >= 1");
  if (!(b.jitter >= 0.0 && b.jitter <= 1.0)) bad("jitter must be in [0, 1]");
}

}  // namespace dmm::detail
