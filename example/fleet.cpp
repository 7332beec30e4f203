#include "fleet.hpp"

#include <stdexcept>

namespace example {

void Fleet::play(const std::string& player, const std::string& song) {
  std::lock_guard lock(mu_);
  if (std::uniform_real_distribution<double>(0, 1)(rng_) < failure_rate_)
    throw std::runtime_error("player '" + player + "' did not answer (simulated network failure)");
  playing_[player] = song;
}

std::map<std::string, std::string> Fleet::observe() {
  std::lock_guard lock(mu_);
  for (auto& [player, song] : playing_)
    if (std::uniform_real_distribution<double>(0, 1)(rng_) < drift_rate_)
      song = songs()[std::uniform_int_distribution<std::size_t>(0, songs().size() - 1)(rng_)];
  return playing_;
}

std::optional<std::string> Fleet::current(const std::string& player) {
  std::lock_guard lock(mu_);
  auto it = playing_.find(player);
  if (it == playing_.end()) return std::nullopt;
  return it->second;
}

}  // namespace example
