// The worker loop of one kind: run_dispatcher, run_executor, run_committer
// (engine/work_stream_engine.hpp); the attempt itself is engine/attempt.cpp.
#include <algorithm>
#include <cmath>
#include <fmt/format.h>
#include <random>
#include <spdlog/spdlog.h>
#include <thread>

#include "dmm/context.hpp"
#include "dmm/errors.hpp"
#include "dmm/work_stream.hpp"
#include "engine/attempt.hpp"
#include "engine/sweeper.hpp"
#include "engine/work_stream_engine.hpp"
#include "protocol/names.hpp"
#include "store/pg.hpp"
#include "support/log_scope.hpp"
#include "support/rate_limited_log.hpp"
#include "support/sleep.hpp"

namespace dmm {

WorkStream::WorkStream(std::unique_ptr<detail::WorkStreamEngine> engine) : engine_(std::move(engine)) {}
WorkStream::~WorkStream() = default;
void WorkStream::work() { engine_->work(); }
void WorkStream::stop() { engine_->stop(); }
const std::string& WorkStream::kind() const { return engine_->kind(); }

namespace detail {
namespace {

using Clock = std::chrono::steady_clock;

double unit_random() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return std::uniform_real_distribution<double>(0.0, 1.0)(rng);
}

}  // namespace

WorkStreamEngine::WorkStreamEngine(const EngineDeps& deps, const KindSpec& kind)
    : deps_(deps),
      kind_(kind),
      metrics_(deps.metrics.kind(kind.name)),
      // Deep enough that a fetched batch fits while the previous ones are
      // still being materialized and written back (see KindOptions::prefetch).
      capacity_(kind.options.prefetch > 0 ? kind.options.prefetch
                                          : std::max(2 * kind.options.concurrency, 2 * kind.options.batch)) {}

WorkStreamEngine::~WorkStreamEngine() {
  stop();
  wait_idle();
}

const std::string& WorkStreamEngine::kind() const { return kind_.name; }

void WorkStreamEngine::stop() {
  // Under mu_: work() takes mu_ after its dispatcher saw the stop (shut_down),
  // so it cannot return, and its caller cannot destroy this engine, while a
  // stop() from another thread (a signal watcher) is still touching room_cv_.
  // Unlocked, the watcher could be preempted between request_stop() and
  // notify_all() while run() returned and ~Bucket freed the engine: a
  // pthread_cond_broadcast on freed memory (ThreadSanitizer: data race
  // between ~WorkStreamEngine and stop()).
  std::lock_guard lock(mu_);
  stop_.request_stop();
  room_cv_.notify_all();
}

void WorkStreamEngine::wait_idle() {
  std::unique_lock lock(mu_);
  idle_cv_.wait(lock, [&] { return !working_; });
}

void WorkStreamEngine::work() {
  {
    std::lock_guard lock(mu_);
    if (working_) throw Error(fmt::format("kind '{}': work() is already running in this process", kind_.name));
    working_ = true;
    executors_exit_ = committer_exit_ = false;
  }
  auto& log = *deps_.logger;
  log.info("bucket '{}' kind '{}': working as {} (concurrency {}, lease {}ms)", deps_.options.name, kind_.name,
           deps_.worker_id, kind_.options.concurrency, kind_.options.lease_ttl.count());
  {
    std::vector<std::jthread> executors;
    for (int i = 0; i < kind_.options.concurrency; ++i) executors.emplace_back([this] { run_executor(); });
    // One committer: a second one, writing back on another connection, was
    // slower (docs/DESIGN.md, "Engine threads").
    std::jthread committer([this] { run_committer(); });
    Sweeper sweeper(deps_, kind_.name, kind_.options.resync_every);
    std::jthread sweeping([&](std::stop_token st) { sweeper.run(st); });

    run_dispatcher(stop_.get_token());
    shut_down();
    executors.clear();  // joins: waits for materializations to return
    {
      std::lock_guard lock(mu_);
      committer_exit_ = true;
    }
    done_cv_.notify_all();
  }
  deps_.nats->flush(std::chrono::milliseconds(2000));
  log.info("bucket '{}' kind '{}': stopped", deps_.options.name, kind_.name);
  std::lock_guard lock(mu_);
  working_ = false;
  idle_cv_.notify_all();
}

void WorkStreamEngine::run_dispatcher(std::stop_token stop) {
  RateLimitedLog errors(*deps_.logger);
  std::unique_ptr<pqxx::connection> conn;
  std::unique_ptr<TokenSource> source;
  auto delay = std::chrono::milliseconds(100);
  while (!stop.stop_requested()) {
    try {
      if (!conn) conn = connect_pg(deps_.options.postgres, "claiming matters of kind '" + kind_.name + "'");
      if (!source) source = std::make_unique<TokenSource>(*deps_.nats, kind_.name);
      bound_ = true;
      int room;
      {
        std::unique_lock lock(mu_);
        room_cv_.wait_for(lock, std::chrono::milliseconds(250),
                          [&] { return static_cast<int>(held_.size()) < capacity_ || stop.stop_requested(); });
        room = capacity_ - static_cast<int>(held_.size());
      }
      if (stop.stop_requested()) break;
      if (room <= 0) continue;
      // A token may name many matters: fetch about as many tokens as the
      // matters that fit, judged by the tokens seen lately.
      room = std::min(room, kind_.options.batch);
      const int want = std::clamp(static_cast<int>(std::lround(room / ids_per_token_)), 1, room);
      auto tokens = source->fetch(want, std::chrono::milliseconds(250));
      if (!tokens.empty()) claim_tokens(*conn, tokens, room);
      delay = std::chrono::milliseconds(100);
    } catch (const std::exception& e) {
      errors.warn("bucket '{}' kind '{}': fetching and claiming work failed: {}; retrying", deps_.options.name,
                  kind_.name, e.what());
      conn.reset();
      source.reset();
      bound_ = false;
      sleep_for(stop, delay);
      delay = std::min(delay * 2, std::chrono::milliseconds(5000));
    }
  }
  bound_ = false;
}

void WorkStreamEngine::claim_tokens(pqxx::connection& conn, std::vector<Token>& tokens, int room) {
  std::vector<std::int64_t> ids, leftover;
  std::vector<Token*> used;
  ids.reserve(static_cast<std::size_t>(room));
  std::size_t named = 0, parsed = 0, handed_back = 0;
  for (auto& token : tokens) {
    auto token_ids = parse_token(token.subject(), token.payload(), deps_.options.name, kind_.name);
    if (!token_ids) {
      deps_.logger->warn("bucket '{}' kind '{}': dropping a message on '{}' that is not a dmm token",
                         deps_.options.name, kind_.name, token.subject());
      token.ack();
      continue;
    }
    named += token_ids->size();
    ++parsed;
    const auto fits = static_cast<std::size_t>(room) - ids.size();
    if (fits == 0) {
      // Fetched more than fits (the tokens were larger than lately): back
      // to the stream, for this process's next fetch or another's.
      if (!token.nak()) metrics_.ack_errors.fetch_add(1, std::memory_order_relaxed);
      ++handed_back;
      continue;
    }
    const auto take = std::min(fits, token_ids->size());
    ids.insert(ids.end(), token_ids->begin(), token_ids->begin() + static_cast<std::ptrdiff_t>(take));
    leftover.assign(token_ids->begin() + static_cast<std::ptrdiff_t>(take), token_ids->end());
    used.push_back(&token);
  }
  if (parsed > 0) ids_per_token_ = (ids_per_token_ + static_cast<double>(named) / static_cast<double>(parsed)) / 2;
  if (handed_back > 0 || !leftover.empty())
    deps_.logger->debug("bucket '{}' kind '{}': {} matter(s) fit; handed back {} token(s), sending {} matter(s) "
                        "again in new tokens",
                        deps_.options.name, kind_.name, ids.size(), handed_back, leftover.size());
  auto claimed = claim(conn, deps_.options.name, kind_.name, ids, deps_.worker_id, kind_.options.lease_ttl);
  // The part of a token that did not fit goes out as a token of its own
  // before that token is acked.
  if (!leftover.empty()) deps_.publish(kind_.name, leftover);
  // Claimed or not, the tokens have done their job: a matter not claimed is
  // leased elsewhere (its holder sees any new generation at write-back), not
  // due yet (the sweeper sends a token when it is), or gone.
  for (auto* token : used)
    if (!token->ack()) metrics_.ack_errors.fetch_add(1, std::memory_order_relaxed);
  if (claimed.empty()) return;
  {
    std::lock_guard lock(mu_);
    for (auto& row : claimed) {
      auto item = std::make_shared<Item>();
      item->row = std::move(row);
      held_[item->row.id] = item;
      ready_.push_back(std::move(item));
    }
  }
  // As many executors as there are new items: waking all of them for a
  // trickle of single tokens costs a context switch each, on every claim.
  if (claimed.size() >= static_cast<std::size_t>(kind_.options.concurrency))
    ready_cv_.notify_all();
  else
    for (std::size_t i = 0; i < claimed.size(); ++i) ready_cv_.notify_one();
}

void WorkStreamEngine::run_executor() {
  while (true) {
    std::shared_ptr<Item> item;
    {
      std::unique_lock lock(mu_);
      ready_cv_.wait(lock, [&] { return !ready_.empty() || executors_exit_; });
      if (ready_.empty()) return;
      item = std::move(ready_.front());
      ready_.pop_front();
      if (item->abandoned) continue;
      item->running = true;
      ++running_;
    }
    Outcome outcome;
    {
      MatterLogScope scope(deps_.options.name, kind_.name, item->row.identity);
      metrics_.in_flight.fetch_add(1, std::memory_order_relaxed);
      const auto started = std::chrono::system_clock::now();
      const auto t0 = Clock::now();
      outcome = attempt(*item);
      const auto us = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0).count();
      metrics_.in_flight.fetch_sub(1, std::memory_order_relaxed);
      outcome.started_ms =
          std::chrono::duration_cast<std::chrono::milliseconds>(started.time_since_epoch()).count();
      outcome.duration_ms = us / 1000;
      outcome.attempt = item->row.attempts + 1;
      metrics_.observe(static_cast<std::size_t>(outcome.kind), us, outcome.attempt);
    }
    bool idle;
    {
      std::lock_guard lock(mu_);
      item->running = false;
      idle = --running_ == 0;
      if (!item->abandoned) {
        item->outcome_queued = true;
        done_.push_back(std::move(outcome));
      }
    }
    done_cv_.notify_one();
    if (idle) idle_cv_.notify_all();  // shut_down() waits for running_ == 0
  }
}

Outcome WorkStreamEngine::attempt(Item& item) {
  Context ctx({deps_.api, deps_.logger, kind_.name, item.row.identity, item.row.attempts + 1, item.stop.get_token()});
  return run_attempt(kind_.hooks, item.row, ctx, {deps_.options.max_state_bytes, kind_.options.backoff, kind_.options.max_attempts,
                      kind_.options.resync_every},
                     unit_random());
}

void WorkStreamEngine::run_committer() {
  RateLimitedLog errors(*deps_.logger);
  std::unique_ptr<pqxx::connection> conn;
  const auto renew_every = kind_.options.lease_ttl / 3;
  auto next_renewal = Clock::now() + renew_every;
  auto last_renewal = Clock::now();
  Clock::time_point failing_since{};  // epoch: not failing
  while (true) {
    std::vector<Outcome> batch;
    bool exiting;
    {
      std::unique_lock lock(mu_);
      done_cv_.wait_until(lock, next_renewal, [&] { return !done_.empty() || committer_exit_; });
      batch.swap(done_);
      exiting = committer_exit_;
    }
    if (exiting && batch.empty()) return;
    try {
      if (!conn) conn = connect_pg(deps_.options.postgres, "writing back matters of kind '" + kind_.name + "'");
      if (!batch.empty()) {
        deps_.publish(write_back(*conn, batch, deps_.options.token_grace, deps_.options.name,
                                             {deps_.options.name, deps_.worker_id, kind_.options.history_limit}));
        {
          std::lock_guard lock(mu_);
          for (const auto& o : batch)
            if (auto it = held_.find(o.id); it != held_.end() && it->second->row.epoch == o.epoch) held_.erase(it);
        }
        room_cv_.notify_one();
      }
      if (Clock::now() >= next_renewal) {
        renew_leases(*conn);
        next_renewal = Clock::now() + renew_every;
        last_renewal = Clock::now();
      }
      failing_since = {};
    } catch (const std::exception& e) {
      errors.warn("bucket '{}' kind '{}': writing back {} outcome(s) failed: {}; retrying", deps_.options.name,
                  kind_.name, batch.size(), e.what());
      conn.reset();
      if (failing_since == Clock::time_point{}) failing_since = Clock::now();
      // Leases not renewed for two thirds of their TTL may soon be taken over:
      // ask running attempts to stop rather than overlap with a new holder.
      if (Clock::now() - last_renewal > 2 * renew_every) abort_attempts("leases could not be renewed");
      if (exiting && Clock::now() - failing_since > kind_.options.stop_grace) {
        deps_.logger->error("bucket '{}' kind '{}': giving up on {} outcome(s) at stop; their leases expire in {}ms "
                            "and other workers take them over",
                            deps_.options.name, kind_.name, batch.size(), kind_.options.lease_ttl.count());
        return;
      }
      {
        std::lock_guard lock(mu_);
        done_.insert(done_.begin(), std::make_move_iterator(batch.begin()), std::make_move_iterator(batch.end()));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  }
}

void WorkStreamEngine::renew_leases(pqxx::connection& conn) {
  std::vector<std::int64_t> ids, epochs;
  {
    std::lock_guard lock(mu_);
    for (const auto& [id, item] : held_) {
      ids.push_back(id);
      epochs.push_back(item->row.epoch);
    }
  }
  if (ids.empty()) return;
  auto lost = heartbeat(conn, ids, epochs, kind_.options.lease_ttl);
  if (lost.empty()) return;
  std::unordered_map<std::int64_t, std::int64_t> sent;  // id -> the epoch the heartbeat asked about
  for (std::size_t i = 0; i < ids.size(); ++i) sent[ids[i]] = epochs[i];
  std::lock_guard lock(mu_);
  for (auto id : lost) {
    auto it = held_.find(id);
    // Its outcome is on the way (the write-back is fenced and tells), or it is
    // held under another epoch than the one asked about (written back and
    // claimed again meanwhile, possible only if write-backs ran beside the
    // heartbeat): not a lease lost under a running attempt.
    if (it == held_.end() || it->second->outcome_queued || it->second->row.epoch != sent[id]) continue;
    auto& item = *it->second;
    MatterLogScope scope(deps_.options.name, kind_.name, item.row.identity);
    metrics_.leases_lost.fetch_add(1, std::memory_order_relaxed);
    deps_.logger->warn("kind '{}' identity '{}': lease lost (expired or taken over); abandoning this attempt",
                       kind_.name, item.row.identity);
    item.abandoned = true;
    item.stop.request_stop();
    held_.erase(it);
  }
  room_cv_.notify_one();
}

void WorkStreamEngine::abort_attempts(const char* why) {
  std::lock_guard lock(mu_);
  for (auto& [id, item] : held_) {
    if (!item->running || item->stop.stop_requested()) continue;
    MatterLogScope scope(deps_.options.name, kind_.name, item->row.identity);
    deps_.logger->warn("kind '{}' identity '{}': {}; requesting the attempt to stop", kind_.name,
                       item->row.identity, why);
    item->stop.request_stop();
  }
}

void WorkStreamEngine::shut_down() {
  std::unique_lock lock(mu_);
  // Queued but not started: release at once.
  for (auto& item : ready_) {
    if (item->abandoned) continue;
    item->abandoned = true;
    done_.push_back(released(item->row));
  }
  ready_.clear();
  executors_exit_ = true;
  // Running: ask them to stop, and give them stop_grace to finish.
  for (auto& [id, item] : held_)
    if (item->running) item->stop.request_stop();
  ready_cv_.notify_all();
  done_cv_.notify_one();
  const std::size_t in_flight = running_;
  if (in_flight)
    deps_.logger->info("bucket '{}' kind '{}': stopping; waiting up to {}ms for {} materialization(s)",
                       deps_.options.name, kind_.name, kind_.options.stop_grace.count(), in_flight);
  if (idle_cv_.wait_for(lock, kind_.options.stop_grace, [&] { return running_ == 0; })) return;
  // Still running: release their leases so nobody waits for them to expire;
  // whatever they return later is dropped.
  for (auto& [id, item] : held_) {
    if (!item->running || item->abandoned) continue;
    MatterLogScope scope(deps_.options.name, kind_.name, item->row.identity);
    deps_.logger->warn("kind '{}' identity '{}': still materializing after stop_grace; releasing its lease",
                       kind_.name, item->row.identity);
    item->abandoned = true;
    done_.push_back(released(item->row));
  }
  done_cv_.notify_one();
}

}  // namespace detail
}  // namespace dmm
