// Retry delays: capped exponential backoff with jitter (see dmm::Backoff).
#pragma once

#include "dmm/options.hpp"

namespace dmm::detail {

// Delay before retrying after failed attempt number `attempt` (1-based).
// `unit_random` in [0, 1) picks the jitter; pass a random value in production
// and fixed ones in tests.
milliseconds backoff_delay(const Backoff& backoff, int attempt, double unit_random);

}  // namespace dmm::detail
