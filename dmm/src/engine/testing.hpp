// Switches the test suites flip to show that their checks can fail (mutation
// checks); internal, not part of the API, and off unless a test sets them.
#pragma once

#include <atomic>

namespace dmm::detail::testing {

// Turns self-expiry off (docs/DESIGN.md, "Self-expiry"): a holder that cannot
// renew its leases keeps running its attempts, and starts claimed matters.
// The partition tests expect overlaps with it set.
inline std::atomic<bool> self_expiry_off{false};

}  // namespace dmm::detail::testing
