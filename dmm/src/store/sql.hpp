// Small helpers for building statement parameters (libpqxx 6.4 cannot bind
// std::vector, so arrays travel as text literals) and reading results.
#pragma once

#include <cstdint>
#include <pqxx/result>
#include <string>
#include <vector>

namespace dmm::detail {

// "{1,2,3}" for use as $n::bigint[].
std::string bigint_array(const std::vector<std::int64_t>& values);

// The first column of every row, as ids.
std::vector<std::int64_t> ids_of(const pqxx::result& rows);

}  // namespace dmm::detail
