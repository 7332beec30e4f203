// Array parameters as text literals (libpqxx 6.4 cannot bind std::vector).
#include "store/sql.hpp"

#include <catch2/catch.hpp>
#include <cstdint>
#include <limits>

using dmm::detail::bigint_array;

TEST_CASE("an empty id list becomes an empty array literal", "[sql]") { CHECK(bigint_array({}) == "{}"); }

TEST_CASE("ids become a comma-separated bigint array literal", "[sql]") {
  CHECK(bigint_array({42}) == "{42}");
  CHECK(bigint_array({1, 2, 3}) == "{1,2,3}");
  CHECK(bigint_array({3, 1, 3}) == "{3,1,3}");  // order and duplicates kept
}

TEST_CASE("the whole bigint range survives the literal", "[sql]") {
  const auto lo = std::numeric_limits<std::int64_t>::min();
  const auto hi = std::numeric_limits<std::int64_t>::max();
  CHECK(bigint_array({lo, -1, 0, hi}) == "{-9223372036854775808,-1,0,9223372036854775807}");
}
