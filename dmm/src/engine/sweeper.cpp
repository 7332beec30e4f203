#include "engine/sweeper.hpp"

#include <algorithm>
#include <spdlog/spdlog.h>

#include "protocol/names.hpp"
#include "protocol/vocabulary.hpp"
#include "store/kicks.hpp"
#include "store/pg.hpp"
#include "support/rate_limited_log.hpp"
#include "support/sleep.hpp"
#include "tokens/tokens.hpp"

namespace dmm::detail {
namespace {

constexpr int kSweepBatch = 1000;
constexpr std::int64_t kMaxIdleMs = 1000;
// Longest a backlog's estimated drain time stretches the re-kick grace.
constexpr auto kMaxDrainStretch = std::chrono::seconds(60);

using SteadyClock = std::chrono::steady_clock;

// Watches the consumer of one class of the kind. Tokens already queued reach
// a worker before any token of the class sent now (a WorkQueue delivers in
// order), so while that queue drains a sweep can only re-send tokens that are
// still pending (the stream rejects them, but every such row is still
// UPDATEd, for nothing) and put its own tokens behind the queue anyway.
// Hence: while the backlog is draining, sweep at most once per token_grace,
// and re-arm swept rows for the grace plus the time the backlog needs to
// drain (at most kMaxDrainStretch), so a matter whose token is merely queued
// is not re-kicked again and again.
class BacklogWatch {
 public:
  explicit BacklogWatch(std::chrono::milliseconds grace) : grace_(grace) {}

  void observe(const std::optional<Nats::Backlog>& b) {
    const auto now = SteadyClock::now();
    if (!b) {
      pending_ = 0;
      return;
    }
    pending_ = b->pending;
    if (have_sample_ && b->delivered > delivered_) last_progress_ = now;
    if (!have_sample_ || b->delivered < delivered_) {  // first sample, or a new consumer
      have_sample_ = true, delivered_ = b->delivered, sampled_at_ = now;
      return;
    }
    const double ms = std::chrono::duration<double, std::milli>(now - sampled_at_).count();
    if (ms >= 200) {
      const double per_ms = static_cast<double>(b->delivered - delivered_) / ms;
      per_ms_ = per_ms_ > 0 ? 0.5 * per_ms_ + 0.5 * per_ms : per_ms;
      delivered_ = b->delivered, sampled_at_ = now;
    }
  }
  // A backlog that is being delivered: workers are taking tokens now.
  bool draining() const { return pending_ > 0 && SteadyClock::now() - last_progress_ < std::chrono::seconds(1); }
  // Sweep now, or leave the queued tokens to the workers a little longer.
  bool sweep_due() const {
    return !draining() || SteadyClock::now() - last_sweep_ >= std::max(grace_, std::chrono::milliseconds(1000));
  }
  void swept() { last_sweep_ = SteadyClock::now(); }
  std::uint64_t pending() const { return pending_; }
  // kick_at for swept rows: the grace, plus the estimated drain time.
  std::chrono::milliseconds rekick_grace() const {
    if (pending_ == 0 || per_ms_ <= 0) return grace_;
    const auto drain = std::chrono::milliseconds(static_cast<std::int64_t>(static_cast<double>(pending_) / per_ms_));
    return grace_ + std::min<std::chrono::milliseconds>(drain, kMaxDrainStretch);
  }

 private:
  const std::chrono::milliseconds grace_;
  std::uint64_t pending_ = 0, delivered_ = 0;
  bool have_sample_ = false;
  double per_ms_ = 0;  // tokens delivered per ms, smoothed
  SteadyClock::time_point sampled_at_{}, last_progress_{}, last_sweep_{};
};

// LISTEN on the wake channel; receiving is all we need, the sweep follows.
class Wake : public pqxx::notification_receiver {
 public:
  explicit Wake(pqxx::connection_base& conn) : pqxx::notification_receiver(conn, kWakeChannel) {}
  void operator()(const std::string&, int) override {}
};

}  // namespace

void Sweeper::run(std::stop_token stop) {
  auto& log = *deps_.logger;
  std::unique_ptr<pqxx::connection> conn;
  std::unique_ptr<Wake> wake;
  RateLimitedLog errors(log);
  // Per class, highest first: each class has its own queue in NATS and its
  // own kicks, so one class's backlog never holds another's back.
  struct Class {
    Priority priority;
    BacklogWatch backlog;
    // Tokens the last sweep sent when it found a full batch (more are due),
    // else 0. While no more than these are queued, the queue is this
    // sweeper's own tail (matters whose only token it just sent: a
    // transactional notify, or tokens that were lost): look again soon
    // instead of in 250 ms, or such a backlog drains at only kSweepBatch
    // matters per 250 ms.
    std::uint64_t sent_by_full_sweep = 0;
  };
  std::vector<Class> classes;
  for (auto p : kPrioritiesHighFirst) classes.push_back({p, BacklogWatch(deps_.options.token_grace), 0});
  while (!stop.stop_requested()) {
    try {
      if (!conn) {
        conn = connect_pg(deps_.options.postgres, "sweeping kind '" + kind_ + "'");
        wake = std::make_unique<Wake>(*conn);
      }
      // Publishes failing may mean the stream is gone (deleted, or a new
      // server): make sure it and our consumers exist before sending more.
      if (deps_.nats->take_publish_errors() > 0) {
        deps_.nats->ensure_stream();
        deps_.nats->ensure_consumers(kind_);
      }
      if (resync_every_.count() > 0 && !resync_scheduled_) {
        schedule_resyncs(*conn, stop);
        resync_scheduled_ = true;
      }
      bool full = false;
      std::int64_t wait_ms = kMaxIdleMs;
      for (auto& c : classes) {
        c.backlog.observe(deps_.nats->backlog(kind_, c.priority));
        if (!c.backlog.sweep_due()) {
          const bool own_tail = c.sent_by_full_sweep > 0 && c.backlog.pending() <= c.sent_by_full_sweep;
          wait_ms = std::min<std::int64_t>(wait_ms, own_tail ? 10 : 250);
          continue;
        }
        c.backlog.swept();
        auto swept = sweep(*conn, deps_.options.name, kind_, c.priority, kSweepBatch, c.backlog.rekick_grace());
        if (const auto owed = swept.owed_count(); owed > 0) {
          log.debug("bucket '{}' kind '{}': sweeper sends {} {} token(s)", deps_.options.name, kind_, owed,
                    to_string(c.priority));
          for (auto p : kPrioritiesHighFirst) deps_.publish(kind_, p, swept.owed[index_of(p)]);
        }
        c.sent_by_full_sweep =
            swept.looked == kSweepBatch ? (swept.owed_count() + kMaxIdsPerToken - 1) / kMaxIdsPerToken : 0;
        if (swept.looked == kSweepBatch) {
          full = true;
          continue;
        }
        if (auto next = next_kick_in_ms(*conn, deps_.options.name, kind_, c.priority))
          wait_ms = std::min(wait_ms, *next);
      }
      if (full) continue;
      deps_.pruner.run_if_due(*conn);
      // At least a few ms: rows locked by another sweeper are skipped, not waited on.
      wait_ms = std::clamp<std::int64_t>(wait_ms, 5, kMaxIdleMs);
      conn->await_notification(wait_ms / 1000, (wait_ms % 1000) * 1000);
    } catch (const std::exception& e) {
      errors.warn("bucket '{}' kind '{}': sweeping failed: {}; retrying", deps_.options.name, kind_, e.what());
      wake.reset();
      conn.reset();
      sleep_for(stop, std::chrono::milliseconds(500));
    }
  }
}

void Sweeper::schedule_resyncs(pqxx::connection& conn, std::stop_token stop) {
  std::int64_t after = 0, total = 0;
  while (!stop.stop_requested()) {
    const auto batch = schedule_unscheduled_resyncs(conn, deps_.options.name, kind_, resync_every_, after, 1000);
    total += batch.scheduled;
    if (!batch.last_id) break;
    after = *batch.last_id;
  }
  if (total > 0)
    deps_.logger->info("bucket '{}' kind '{}': scheduled the resync of {} ready matter(s), spread over {}ms",
                       deps_.options.name, kind_, total, resync_every_.count());
}

}  // namespace dmm::detail
