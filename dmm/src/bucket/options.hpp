// Validation of BucketOptions, KindOptions and Backoff (dmm/options.hpp).
#pragma once

#include <cstdint>
#include <string>

#include "dmm/options.hpp"

namespace dmm::detail {

// `o` with defaults filled in (a worker id); InvalidArgument naming the
// bucket and the field for an unusable value.
BucketOptions validated(BucketOptions o);

// InvalidArgument naming `bucket` and the field for unusable HTTP options
// (the token's length, never the token).
void validate_http_options(const HttpOptions& options, const std::string& bucket);

// InvalidArgument naming `kind` and the field for an unusable option.
void validate_kind_options(const KindOptions& options, const std::string& kind);

// The delay in ms that `o` asks for (0: due now); InvalidArgument naming
// `kind` for a negative delay, a time far in the past, or both set.
std::int64_t notify_delay_ms(const NotifyOptions& o, const std::string& kind);

// InvalidArgument naming `kind` for a priority outside dmm::Priority.
void validate_priority(const NotifyOptions& o, const std::string& kind);

// InvalidArgument naming `kind` and the field if `backoff` is unusable.
void validate_backoff(const Backoff& backoff, const std::string& kind);

}  // namespace dmm::detail
