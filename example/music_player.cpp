#include "music_player.hpp"

#include <condition_variable>
#include <spdlog/spdlog.h>
#include <stdexcept>
#include <thread>

#include "fleet.hpp"

namespace example {

dmm::Result MusicPlayer::materialize(dmm::Context& ctx) {
  if (ctx.attempt() <= fail_first)
    throw std::runtime_error("simulated failure " + std::to_string(ctx.attempt()) + " of " +
                             std::to_string(fail_first));
  if (current_song == desired_song) return dmm::Result::done();
  ctx.service<Fleet>().play(player_id, desired_song);  // throws => retried with backoff
  ctx.log().info("kind '{}' identity '{}': now playing '{}' (was '{}')", ctx.kind(), player_id, desired_song,
                 current_song);
  current_song = desired_song;  // the cache now matches reality
  return dmm::Result::done();
}

void observe_fleet(dmm::Bucket& bucket, Fleet& fleet, std::chrono::milliseconds period, std::stop_token stop) {
  while (!stop.stop_requested()) {
    for (const auto& [player, song] : fleet.observe()) {
      try {
        // Absolute state: "this is what plays now", whatever happened before.
        // The same song as stored is a cheap no-op.
        bucket.update<MusicPlayer>(player, [&](MusicPlayer& p) { p.current_song = song; });
      } catch (const std::exception& e) {
        spdlog::warn("observer: cannot record player '{}': {}", player, e.what());
      }
    }
    std::mutex mu;
    std::condition_variable_any cv;
    std::unique_lock lock(mu);
    cv.wait_for(lock, stop, period, [] { return false; });
  }
}

}  // namespace example
