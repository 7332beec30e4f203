// Small helpers for building statement parameters (libpqxx 6.4 cannot bind
// std::vector, so arrays travel as text literals).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dmm::detail {

// "{1,2,3}" for use as $n::bigint[].
std::string bigint_array(const std::vector<std::int64_t>& values);

}  // namespace dmm::detail
