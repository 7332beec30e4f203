// The status a bucket's HTTP endpoint serves (operate/http.hpp).
#pragma once

#include "bucket/bucket_core.hpp"
#include "operate/http.hpp"

namespace dmm::detail {

// Endpoints that read `core`, which must outlive them.
StatusEndpoints status_endpoints(BucketCore& core);

}  // namespace dmm::detail
