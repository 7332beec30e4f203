// The vocabulary (protocol/vocabulary.hpp): names and wire codes from one table.
#include "protocol/vocabulary.hpp"

#include <catch2/catch.hpp>

using namespace dmm::detail;

TEST_CASE("an outcome's wire code is its 1-based position in the SQL array", "[vocabulary]") {
  CHECK(outcome_array_sql() == "ARRAY['done', 'requeue', 'retry', 'failed', 'finalized', 'release']");
  CHECK(outcome_code(OutcomeKind::done) == 1);
  CHECK(outcome_code(OutcomeKind::finalized) == 5);
  CHECK(std::string(to_string(OutcomeKind::release)) == "release");
}

TEST_CASE("the phases are the words of migration 0001's CHECK, in its order", "[vocabulary]") {
  CHECK(phase_list_sql() == "('pending', 'reconciling', 'retrying', 'ready', 'deleting', 'failed')");
  CHECK(std::string(to_string(Phase::deleting)) == "deleting");
}
