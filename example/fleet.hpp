// A simulated fleet of music players: the "real world" the example's
// materializer changes and its observer watches. Players answer commands
// (sometimes failing), and now and then switch song on their own — drift
// that only the observer can notice.
#pragma once

#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace example {

class Fleet {
 public:
  // `failure_rate`: chance that a play command fails; `drift_rate`: chance per
  // observe() that a player switches song by itself.
  Fleet(double failure_rate, double drift_rate) : failure_rate_(failure_rate), drift_rate_(drift_rate) {}

  // Tells a player to play `song`; throws if the (simulated) player does not
  // respond. Players come into existence when first told to play.
  void play(const std::string& player, const std::string& song);

  // Each player's absolute current song, after random drift.
  std::map<std::string, std::string> observe();

  std::optional<std::string> current(const std::string& player);

 private:
  const double failure_rate_;
  const double drift_rate_;
  std::mutex mu_;
  std::map<std::string, std::string> playing_;  // guarded by mu_
  std::mt19937 rng_{std::random_device{}()};    // guarded by mu_
};

inline const std::vector<std::string>& songs() {
  static const std::vector<std::string> all = {"Blue in Green", "So What", "Naima", "Take Five", "Footprints",
                                               "Autumn Leaves"};
  return all;
}

}  // namespace example
