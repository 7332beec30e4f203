#include "engine/deps.hpp"

#include <map>
#include <string_view>

namespace dmm::detail {

void publish_owed(Nats& nats, const std::vector<TokenOwed>& owed) {
  if (owed.empty()) return;
  std::map<std::pair<std::string_view, Priority>, std::vector<std::int64_t>> by_class;
  for (const auto& t : owed) by_class[{t.kind, t.priority}].push_back(t.id);
  // Highest class first: its tokens reach the stream first.
  for (auto it = by_class.rbegin(); it != by_class.rend(); ++it)
    nats.publish(std::string(it->first.first), it->first.second, it->second);
}

void EngineDeps::publish(const std::vector<TokenOwed>& owed) const { publish_owed(*nats, owed); }

}  // namespace dmm::detail
