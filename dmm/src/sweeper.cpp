#include "sweeper.hpp"

#include <algorithm>
#include <spdlog/spdlog.h>

#include "bucket_core.hpp"
#include "store.hpp"
#include "work_stream_engine.hpp"

namespace dmm::detail {
namespace {

constexpr int kSweepBatch = 1000;
constexpr int kPruneBatch = 5000;
constexpr auto kPruneEvery = std::chrono::seconds(60);
constexpr std::int64_t kMaxIdleMs = 1000;

// LISTEN on the wake channel; receiving is all we need, the sweep follows.
class Wake : public pqxx::notification_receiver {
 public:
  explicit Wake(pqxx::connection_base& conn) : pqxx::notification_receiver(conn, kWakeChannel) {}
  void operator()(const std::string&, int) override {}
};

}  // namespace

void Sweeper::run(std::stop_token stop) {
  auto& log = *core_.logger;
  std::unique_ptr<pqxx::connection> conn;
  std::unique_ptr<Wake> wake;
  auto last_error_log = std::chrono::steady_clock::time_point{};
  // Soon after start, then about once a minute: history beyond the retention.
  auto next_prune = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!stop.stop_requested()) {
    try {
      if (!conn) {
        conn = connect_pg(core_.options.postgres, "sweeping kind '" + kind_ + "'");
        wake = std::make_unique<Wake>(*conn);
      }
      // Publishes failing may mean the stream is gone (deleted, or a new
      // server): make sure it and our consumer exist before sending more.
      if (core_.nats->take_publish_errors() > 0) {
        core_.nats->ensure_stream();
        core_.nats->ensure_consumer(kind_);
      }
      auto ids = sweep(*conn, core_.options.name, kind_, kSweepBatch, core_.options.token_grace);
      if (!ids.empty()) {
        log.debug("bucket '{}' kind '{}': sweeper sends {} token(s)", core_.options.name, kind_, ids.size());
        core_.publish(kind_, ids);
      }
      if (ids.size() == static_cast<std::size_t>(kSweepBatch)) continue;
      if (std::chrono::steady_clock::now() >= next_prune) {
        next_prune = std::chrono::steady_clock::now() + kPruneEvery;
        std::int64_t pruned = 0;
        for (int round = 0; round < 20; ++round) {
          const auto n = prune_history(*conn, core_.options.name, core_.options.history_retention, kPruneBatch);
          pruned += n;
          if (n < kPruneBatch) break;
        }
        if (pruned > 0)
          log.debug("bucket '{}' kind '{}': pruned {} attempt(s) from the history", core_.options.name, kind_, pruned);
      }
      auto next = next_kick_in_ms(*conn, core_.options.name, kind_).value_or(kMaxIdleMs);
      // At least a few ms: rows locked by another sweeper are skipped, not waited on.
      const auto wait_ms = std::clamp<std::int64_t>(next, 5, kMaxIdleMs);
      conn->await_notification(wait_ms / 1000, (wait_ms % 1000) * 1000);
    } catch (const std::exception& e) {
      const auto now = std::chrono::steady_clock::now();
      if (now - last_error_log > std::chrono::seconds(5)) {
        last_error_log = now;
        log.warn("bucket '{}' kind '{}': sweeping failed: {}; retrying", core_.options.name, kind_, e.what());
      }
      wake.reset();
      conn.reset();
      sleep_for(stop, std::chrono::milliseconds(500));
    }
  }
}

}  // namespace dmm::detail
