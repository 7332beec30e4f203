// One attempt at a claimed matter: run the kind's materialize (or finalize,
// for a matter being removed) and turn how it ended into an Outcome for the
// write-back. A pure function of its inputs: no I/O of its own, so every
// branch is unit-tested without servers (tests/unit/engine/attempt_test.cpp).
#pragma once

#include <cstddef>

#include "dmm/context.hpp"
#include "dmm/detail/core.hpp"
#include "dmm/options.hpp"
#include "store/matters.hpp"

namespace dmm::detail {

struct AttemptPolicy {
  std::size_t max_state_bytes = 0;  // BucketOptions::max_state_bytes
  Backoff backoff;                  // KindOptions::backoff
  int max_attempts = 0;             // KindOptions::max_attempts (0: forever)
  milliseconds resync_every{0};     // KindOptions::resync_every (0: off)
};

// The outcome of materializing (or finalizing) `row` with `ctx`:
// - returned: done or requeue, with the state only if the materializer
//   changed it (a state over the limit fails terminally); with resync_every,
//   done is a requeue after resync_every ±10% (jitter from `unit_random`);
// - TerminalError: failed;
// - any other throw: retry after the backoff for this attempt (jitter from
//   `unit_random`, in [0, 1)) or after a RetryAfter's own delay; failed
//   ("gave up after N attempts") when this was attempt max_attempts; or, if
//   ctx's stop was requested, released without counting the attempt.
// Timing fields (started_ms, duration_ms, attempt) are the caller's.
Outcome run_attempt(const KindHooks& hooks, const Claimed& row, Context& ctx, const AttemptPolicy& policy,
                    double unit_random);

// The outcome that hands `row` back unattempted (stop, shutdown).
Outcome released(const Claimed& row);

}  // namespace dmm::detail
