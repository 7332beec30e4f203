#include "engine/deps.hpp"

#include <map>
#include <string_view>

namespace dmm::detail {

void EngineDeps::publish(const std::vector<TokenOwed>& owed) const {
  std::map<std::string_view, std::vector<std::int64_t>> by_kind;
  for (const auto& t : owed) by_kind[t.kind].push_back(t.id);
  for (const auto& [kind, ids] : by_kind) nats->publish(std::string(kind), ids);
}

}  // namespace dmm::detail
