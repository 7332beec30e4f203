// The music player of the dmm README: its desired song is set by whoever
// creates it; its current song is what the real player reports.
//
// Both halves of the pattern:
// - materialize() changes reality: it tells the player to play the desired
//   song when the cache says the current one differs;
// - observe_fleet() pushes the absolute state of reality: each player's
//   current song, recorded with Bucket::update so the desired song is kept.
#pragma once

#include <dmm/dmm.hpp>
#include <stop_token>
#include <string>

namespace example {

struct MusicPlayer {
  std::string player_id{};
  std::string desired_song{};
  std::string current_song{};
  // Demo aid: fail this many attempts before succeeding (example create --flaky).
  int fail_first = 0;

  std::string identity() const { return player_id; }
  dmm::Result materialize(dmm::Context& ctx);
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(MusicPlayer, player_id, desired_song, current_song, fail_first)

// The observer: every `period`, reports each player's current song until stop.
void observe_fleet(dmm::Bucket& bucket, class Fleet& fleet, std::chrono::milliseconds period, std::stop_token stop);

}  // namespace example
