#include "protocol/vocabulary.hpp"

namespace dmm::detail {

std::string outcome_array_sql() {
  std::string out = "ARRAY[";
  for (std::size_t i = 0; i < kOutcomes.size(); ++i) out += (i ? ", '" : "'") + std::string(kOutcomes[i].name) + "'";
  return out + "]";
}

std::string phase_list_sql() {
  std::string out = "(";
  for (std::size_t i = 0; i < kPhases.size(); ++i) out += (i ? ", '" : "'") + std::string(kPhases[i].name) + "'";
  return out + ")";
}

}  // namespace dmm::detail
