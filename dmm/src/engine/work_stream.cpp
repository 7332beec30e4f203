// The worker loop of one kind: run_dispatcher, run_executor, run_committer
// (engine/work_stream_engine.hpp); the attempt itself is engine/attempt.cpp.
#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <fmt/format.h>
#include <random>
#include <spdlog/spdlog.h>
#include <thread>
#include <unordered_set>

#include "dmm/context.hpp"
#include "dmm/errors.hpp"
#include "dmm/work_stream.hpp"
#include "engine/attempt.hpp"
#include "engine/sweeper.hpp"
#include "engine/testing.hpp"
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
  fetch_cv_.notify_all();
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
    executors_exit_ = committer_exit_ = watch_exit_ = false;
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
    std::jthread lease_watch([this] { run_lease_watch(); });
    Sweeper sweeper(deps_, kind_.name, kind_.options.resync_every);
    std::jthread sweeping([&](std::stop_token st) { sweeper.run(st); });

    run_dispatcher(stop_.get_token());
    shut_down();
    executors.clear();  // joins: waits for materializations to return
    {
      std::lock_guard lock(mu_);
      committer_exit_ = watch_exit_ = true;
    }
    done_cv_.notify_all();
    watch_cv_.notify_all();
  }
  deps_.nats->flush(std::chrono::milliseconds(2000));
  log.info("bucket '{}' kind '{}': stopped", deps_.options.name, kind_.name);
  std::lock_guard lock(mu_);
  working_ = false;
  idle_cv_.notify_all();
}

namespace {

// How long a fetched token may wait for the dispatcher before it goes back
// to the stream: far longer than a claim takes, far shorter than AckWait.
constexpr auto kStaleFetched = std::chrono::seconds(5);
// With every global slot taken or the rate spent, how soon a claim looks
// again: a slot that another process gives back is found this late at most.
constexpr auto kLimitPoll = std::chrono::milliseconds(20);

}  // namespace

bool WorkStreamEngine::may_fetch(Priority priority) const {
  // Tokens of a higher class waiting: they go first, and this class's would
  // only wait behind them (and go stale).
  for (auto p : kPrioritiesHighFirst) {
    if (!fetched_[index_of(p)].empty()) return false;
    if (p == priority) break;
  }
  // The highest class fetches even without room: it claims its own tokens
  // (claims_own), or they are the first to be claimed when room opens.
  return priority == Priority::high ||
         static_cast<int>(held_.size() + fetched_ids_) < fetch_capacity();
}

bool WorkStreamEngine::claims_own(Priority priority) const {
  // Not under global limits: the dispatcher alone decides when a limited
  // kind may claim (claim_room, may_claim_under_limits).
  return priority == Priority::high && !limits().any() &&
         static_cast<int>(held_.size()) < capacity_ + kind_.options.batch;
}

void WorkStreamEngine::run_fetcher(Priority priority, std::stop_token stop) {
  RateLimitedLog errors(*deps_.logger);
  std::unique_ptr<pqxx::connection> conn;  // for claims_own
  Clock::time_point next_connect{};
  std::shared_ptr<TokenSource> source;
  auto delay = std::chrono::milliseconds(100);
  auto& queue = fetched_[index_of(priority)];
  bool failed = false;  // the last fetch failed: the consumer may be gone (a deleted stream)
  while (!stop.stop_requested()) {
    try {
      if (!source) {
        source = std::make_shared<TokenSource>(*deps_.nats, kind_.name, priority);
        ++bound_;
      } else if (failed) {
        deps_.nats->ensure_consumer(kind_.name, priority);
      }
      // Connected before the first token (a first high notify should not
      // wait tens of ms for it); without one, the dispatcher claims them.
      if (!conn && priority == Priority::high && !limits().any() && Clock::now() >= next_connect) {
        next_connect = Clock::now() + std::chrono::seconds(1);
        try {
          conn = connect_pg(deps_.options.postgres, "claiming high matters of kind '" + kind_.name + "'");
        } catch (const std::exception& e) {
          errors.warn("bucket '{}' kind '{}': {}; the dispatcher claims high matters meanwhile", deps_.options.name,
                      kind_.name, e.what());
        }
      }
      failed = false;
      int want;
      {
        std::unique_lock lock(mu_);
        fetch_cv_.wait_for(lock, std::chrono::milliseconds(250),
                           [&] { return stop.stop_requested() || may_fetch(priority); });
        if (stop.stop_requested()) break;
        if (!may_fetch(priority)) continue;
        // A token may name many matters: fetch about as many tokens as the
        // matters that fit, judged by the tokens seen lately. The high class
        // of a kind without global limits takes all it has pending (up to a
        // batch) whatever the room, and claims them itself (claims_own): one
        // token per claim cycle fell behind 200 high notifies/s
        // (bench/results.md, "urgent").
        const int room = priority == Priority::high && !limits().any()
                             ? kind_.options.batch
                             : std::clamp(fetch_capacity() - static_cast<int>(held_.size() + fetched_ids_), 1,
                                          kind_.options.batch);
        want = std::clamp(static_cast<int>(std::lround(room / ids_per_token_)), 1, room);
      }
      auto tokens = source->fetch(want, std::chrono::milliseconds(250));
      delay = std::chrono::milliseconds(100);
      if (tokens.empty()) continue;
      std::vector<Fetched> parsed;
      std::size_t named = 0;
      for (auto& token : tokens) {
        auto ids = parse_token(token.subject(), token.payload(), deps_.options.name, kind_.name, priority);
        if (!ids) {
          deps_.logger->warn("bucket '{}' kind '{}': dropping a message on '{}' that is not a dmm token",
                             deps_.options.name, kind_.name, token.subject());
          token.ack();
          continue;
        }
        named += ids->size();
        parsed.push_back({source, std::move(token), std::move(*ids), priority, Clock::now()});
      }
      if (parsed.empty()) continue;
      bool own = false;
      if (conn) {
        std::lock_guard lock(mu_);
        own = claims_own(priority);
      }
      if (own) {
        // Claimed here, on a connection of its own, rather than behind the
        // dispatcher's claim of a whole batch of lower classes (tens of ms).
        try {
          claim_tokens(*conn, parsed, static_cast<int>(std::min<std::size_t>(named, kind_.options.batch)));
        } catch (...) {
          conn.reset();
          for (auto& f : parsed)  // back to the stream now rather than after AckWait
            if (!f.token.nak()) metrics_.ack_errors.fetch_add(1, std::memory_order_relaxed);
          throw;
        }
        continue;
      }
      {
        std::lock_guard lock(mu_);
        ids_per_token_ = (ids_per_token_ + static_cast<double>(named) / static_cast<double>(parsed.size())) / 2;
        fetched_ids_ += named;
        for (auto& f : parsed) queue.push_back(std::move(f));
      }
      room_cv_.notify_one();
    } catch (const std::exception& e) {
      errors.warn("bucket '{}' kind '{}': fetching {} tokens failed: {}; retrying", deps_.options.name, kind_.name,
                  to_string(priority), e.what());
      failed = true;
      // The subscription is kept unless it is closed: nats.c resubscribes it
      // after a reconnect, and freeing one while the connection may still
      // deliver to it (the server's "Server Shutdown" to every waiting pull
      // comes just before the socket closes) corrupted the heap: nats.c 3.4.1
      // frees it under its read loop (tokens.cpp, ~TokenSource).
      if (source && source->broken()) {
        --bound_;
        source.reset();
      }
      sleep_for(stop, delay);
      delay = std::min(delay * 2, std::chrono::milliseconds(5000));
    }
  }
  if (source) --bound_;
}

std::vector<WorkStreamEngine::Fetched> WorkStreamEngine::take_fetched(int room) {
  std::vector<Fetched> taken;
  std::size_t ids = 0;
  for (auto p : kPrioritiesHighFirst) {
    auto& queue = fetched_[index_of(p)];
    if (fair() && !taken.empty()) break;
    while (!queue.empty() && ids < static_cast<std::size_t>(room)) {
      ids += queue.front().ids.size();
      fetched_ids_ -= queue.front().ids.size();
      taken.push_back(std::move(queue.front()));
      queue.pop_front();
    }
  }
  return taken;
}

std::vector<WorkStreamEngine::Fetched> WorkStreamEngine::take_stale(Clock::time_point now) {
  std::vector<Fetched> stale;
  for (auto& queue : fetched_)
    while (!queue.empty() && now - queue.front().at > kStaleFetched) {
      fetched_ids_ -= queue.front().ids.size();
      stale.push_back(std::move(queue.front()));
      queue.pop_front();
    }
  return stale;
}

void WorkStreamEngine::run_dispatcher(std::stop_token stop) {
  RateLimitedLog errors(*deps_.logger);
  std::unique_ptr<pqxx::connection> conn;
  auto delay = std::chrono::milliseconds(100);
  const auto hand_back = [this](std::vector<Fetched>& tokens) {
    for (auto& f : tokens)
      if (!f.token.nak()) metrics_.ack_errors.fetch_add(1, std::memory_order_relaxed);
    tokens.clear();
  };
  {
    std::vector<std::jthread> fetchers;
    for (auto p : kPrioritiesHighFirst) fetchers.emplace_back([this, p, stop] { run_fetcher(p, stop); });
    while (!stop.stop_requested()) {
      std::vector<Fetched> taken;
      try {
        if (!conn) {
          conn = connect_pg(deps_.options.postgres, "claiming matters of kind '" + kind_.name + "'");
          if (limits().any())
            ensure_limits(*conn, deps_.options.name, kind_.name, kind_.options.global_concurrency,
                          kind_.options.rate_limit);
        }
        int room;
        std::vector<Fetched> stale;
        {
          std::unique_lock lock(mu_);
          auto until = Clock::now() + std::chrono::milliseconds(250);
          if (!limits_eased_) until = std::min(until, limits_retry_at_);
          room_cv_.wait_until(lock, until, [&] {
            return stop.stop_requested() ||
                   (claim_room() > 0 && fetched_ids_ > 0 && may_claim_under_limits(Clock::now()));
          });
          if (stop.stop_requested()) break;
          stale = take_stale(Clock::now());
          room = claim_room();
          if (room > 0 && may_claim_under_limits(Clock::now())) taken = take_fetched(room);
        }
        if (!stale.empty()) {
          deps_.logger->debug("bucket '{}' kind '{}': handing back {} token(s) that waited behind higher classes",
                              deps_.options.name, kind_.name, stale.size());
          hand_back(stale);
        }
        if (taken.empty()) continue;
        fetch_cv_.notify_all();
        claim_tokens(*conn, taken, room);
        delay = std::chrono::milliseconds(100);
      } catch (const std::exception& e) {
        errors.warn("bucket '{}' kind '{}': claiming work failed: {}; retrying", deps_.options.name, kind_.name,
                    e.what());
        // Back to the stream now rather than after AckWait.
        hand_back(taken);
        conn.reset();
        sleep_for(stop, delay);
        delay = std::min(delay * 2, std::chrono::milliseconds(5000));
      }
    }
    fetch_cv_.notify_all();
  }  // joins the fetchers
  std::vector<Fetched> left;
  {
    std::lock_guard lock(mu_);
    left = take_fetched(std::numeric_limits<int>::max());
  }
  hand_back(left);
}

void WorkStreamEngine::claim_tokens(pqxx::connection& conn, std::vector<Fetched>& tokens, int room) {
  std::vector<std::int64_t> ids, leftover;
  Priority leftover_class = Priority::normal;
  std::unordered_map<std::int64_t, Priority> class_of;
  ids.reserve(static_cast<std::size_t>(room));
  for (auto& f : tokens) {
    // Only the last token taken can overflow the room (take_fetched).
    const auto fits = static_cast<std::size_t>(room) - std::min(ids.size(), static_cast<std::size_t>(room));
    const auto take = std::min(fits, f.ids.size());
    for (std::size_t i = 0; i < take; ++i) {
      ids.push_back(f.ids[i]);
      auto [it, fresh] = class_of.try_emplace(f.ids[i], f.priority);
      if (!fresh && index_of(f.priority) > index_of(it->second)) it->second = f.priority;
    }
    if (take < f.ids.size()) {
      leftover.assign(f.ids.begin() + static_cast<std::ptrdiff_t>(take), f.ids.end());
      leftover_class = f.priority;
    }
  }
  if (!leftover.empty())
    deps_.logger->debug("bucket '{}' kind '{}': {} matter(s) fit; sending {} matter(s) again in new tokens",
                        deps_.options.name, kind_.name, ids.size(), leftover.size());
  // A fair kind's claim picks its matters key by key among the due ones of
  // the tokens' class; the tokens only say how many.
  const auto token_class = tokens.front().priority;
  std::optional<FairTurn> turn;
  if (fair()) {
    std::lock_guard lock(mu_);
    turn = FairTurn{token_class, fair_after_[index_of(token_class)]};
  }
  const auto sent = Clock::now();  // the lease ends lease_ttl after the claim runs, so not before this
  auto [claimed, waiting] = claim(conn, deps_.options.name, kind_.name, ids, deps_.worker_id,
                                  kind_.options.lease_ttl, limits(), turn ? &*turn : nullptr);
  if (turn) {
    std::lock_guard lock(mu_);
    fair_after_[index_of(token_class)] = std::move(turn->after);
  }
  // The part of a token that did not fit goes out as a token of its own
  // before that token is acked.
  if (!leftover.empty()) deps_.publish(kind_.name, leftover_class, leftover);
  // A token naming matters that found no free global slot or rate token is
  // kept, naming just those, and tried again first (a slot frees when a run
  // ends, the rate grows with time). The
  // other tokens have done their job, claimed or not: a matter not claimed
  // is leased elsewhere (its holder sees any new generation at write-back),
  // not due yet (the sweeper sends a token when it is), or gone.
  const std::unordered_set<std::int64_t> wait(waiting.begin(), waiting.end());
  std::vector<Fetched> parked;
  for (auto& f : tokens) {
    std::vector<std::int64_t> still;
    if (!wait.empty())
      for (auto id : f.ids)
        if (wait.count(id)) still.push_back(id);  // never one of `leftover`: those were not asked for
    if (still.empty()) {
      if (!f.token.ack()) metrics_.ack_errors.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    f.ids = std::move(still);
    parked.push_back(std::move(f));
  }
  tokens.clear();
  if (!parked.empty()) {
    std::lock_guard lock(mu_);
    limits_eased_ = false;
    limits_retry_at_ = Clock::now() + kLimitPoll;
    for (auto it = parked.rbegin(); it != parked.rend(); ++it) {
      fetched_ids_ += it->ids.size();
      fetched_[index_of(it->priority)].push_front(std::move(*it));
    }
  }
  if (claimed.empty()) return;
  {
    std::lock_guard lock(mu_);
    for (auto& row : claimed) {
      auto item = std::make_shared<Item>();
      const auto named = class_of.find(row.id);  // a fair claim's pick may be named by no token
      item->priority = named != class_of.end() ? named->second : token_class;
      item->row = std::move(row);
      item->lease_ends = sent + kind_.options.lease_ttl;
      held_[item->row.id] = item;
      ready_[index_of(item->priority)].push_back(std::move(item));
    }
  }
  // As many executors as there are new items: waking all of them for a
  // trickle of single tokens costs a context switch each, on every claim.
  if (claimed.size() >= static_cast<std::size_t>(kind_.options.concurrency))
    ready_cv_.notify_all();
  else
    for (std::size_t i = 0; i < claimed.size(); ++i) ready_cv_.notify_one();
}

ClaimLimits WorkStreamEngine::limits() const {
  return {kind_.options.global_concurrency, kind_.options.rate_limit.count > 0};
}

int WorkStreamEngine::fetch_capacity() const {
  // A limited kind claims only for idle executors (claim_room): tokens
  // fetched beyond what they take next would wait, and go back to the
  // stream stale, while other processes could have claimed their matters.
  if (!limits().any()) return capacity_;
  return std::min(capacity_, 2 * kind_.options.concurrency);
}

int WorkStreamEngine::claim_room() const {
  const int room = std::min(capacity_ - static_cast<int>(held_.size()), kind_.options.batch);
  if (!limits().any()) return room;
  // A limited kind claims no more than its idle executors take at once: a
  // matter queued here would hold a global slot idle, or have spent its rate
  // token long before it starts.
  std::size_t queued = 0;
  for (const auto& q : ready_) queued += q.size();
  return std::min(room, kind_.options.concurrency - running_ - static_cast<int>(queued));
}

bool WorkStreamEngine::may_claim_under_limits(Clock::time_point now) const {
  return limits_eased_ || now >= limits_retry_at_;
}

void WorkStreamEngine::run_executor() {
  while (true) {
    std::shared_ptr<Item> item;
    {
      std::unique_lock lock(mu_);
      // Highest class first.
      const auto next = [&]() -> std::deque<std::shared_ptr<Item>>* {
        for (auto p : kPrioritiesHighFirst)
          if (!ready_[index_of(p)].empty()) return &ready_[index_of(p)];
        return nullptr;
      };
      ready_cv_.wait(lock, [&] { return next() || executors_exit_; });
      auto* queue = next();
      if (!queue) return;
      item = std::move(queue->front());
      queue->pop_front();
      if (item->abandoned) continue;
      // Claimed, then queued while no heartbeat got through: its lease may be
      // taken over before a materialization could return. Given back instead
      // (the release is fenced: a no-op if the lease was taken over).
      if (Clock::now() >= item->lease_ends - lease_margin() && !testing::self_expiry_off.load()) {
        deps_.logger->warn("kind '{}' identity '{}': its lease could not be renewed in time (PostgreSQL unreachable "
                           "or slow); giving it back without materializing",
                           kind_.name, item->row.identity);
        item->abandoned = true;
        item->outcome_queued = true;
        done_.push_back(released(item->row));
        done_cv_.notify_one();
        continue;
      }
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
    if (limits().any()) room_cv_.notify_one();  // an idle executor: a limited kind may claim (claim_room)
    if (idle) idle_cv_.notify_all();  // shut_down() waits for running_ == 0
  }
}

Outcome WorkStreamEngine::attempt(Item& item) {
  Context ctx({deps_.api, deps_.logger, kind_.name, item.row.identity, item.row.attempts + 1, item.stop.get_token(),
               item.row.id, item.row.epoch, item.row.generation});
  return run_attempt(kind_.hooks, item.row, ctx, {deps_.options.max_state_bytes, kind_.options.backoff, kind_.options.max_attempts,
                      kind_.options.resync_every},
                     unit_random());
}

void WorkStreamEngine::run_committer() {
  RateLimitedLog errors(*deps_.logger);
  std::unique_ptr<pqxx::connection> conn;
  const auto renew_every = kind_.options.lease_ttl / 3;
  auto next_renewal = Clock::now() + renew_every;
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
      // The heartbeat first: on a slow link a write-back ahead of it would
      // bring the leases' self-expiry closer (docs/DESIGN.md, "Self-expiry").
      if (Clock::now() >= next_renewal) {
        renew_leases(*conn);
        next_renewal = Clock::now() + renew_every;
      }
      if (!batch.empty()) {
        deps_.publish(write_back(*conn, batch, deps_.options.token_grace, deps_.options.name,
                                             {deps_.options.name, deps_.worker_id, kind_.options.history_limit}));
        if (kind_.options.global_concurrency > 0) release_slots(*conn, deps_.options.name, kind_.name, batch);
        {
          std::lock_guard lock(mu_);
          limits_eased_ = true;
          for (const auto& o : batch)
            if (auto it = held_.find(o.id); it != held_.end() && it->second->row.epoch == o.epoch) held_.erase(it);
        }
        room_cv_.notify_one();
        fetch_cv_.notify_all();
      }
      failing_since = {};
    } catch (const std::exception& e) {
      errors.warn("bucket '{}' kind '{}': writing back {} outcome(s) failed: {}; retrying", deps_.options.name,
                  kind_.name, batch.size(), e.what());
      conn.reset();
      if (failing_since == Clock::time_point{}) failing_since = Clock::now();
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
  const auto sent = Clock::now();  // a renewed lease ends lease_ttl after the heartbeat runs, so not before this
  auto lost = heartbeat(conn, ids, epochs, kind_.options.lease_ttl, kind_.options.global_concurrency > 0);
  const std::unordered_set<std::int64_t> lost_ids(lost.begin(), lost.end());
  std::lock_guard lock(mu_);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    auto it = held_.find(ids[i]);
    if (it == held_.end() || it->second->row.epoch != epochs[i] || lost_ids.count(ids[i])) continue;
    it->second->lease_ends = std::max(it->second->lease_ends, sent + kind_.options.lease_ttl);
  }
  if (lost.empty()) return;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (!lost_ids.count(ids[i])) continue;
    auto it = held_.find(ids[i]);
    // Its outcome is on the way (the write-back is fenced and tells), or it is
    // held under another epoch than the one asked about (written back and
    // claimed again meanwhile, possible only if write-backs ran beside the
    // heartbeat): not a lease lost under a running attempt.
    if (it == held_.end() || it->second->outcome_queued || it->second->row.epoch != epochs[i]) continue;
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
  fetch_cv_.notify_all();
}

std::chrono::milliseconds WorkStreamEngine::lease_margin() const {
  return kind_.options.lease_margin.count() > 0 ? kind_.options.lease_margin : kind_.options.lease_ttl / 3;
}

void WorkStreamEngine::run_lease_watch() {
  // The heartbeat fences nothing while user code runs: a holder that cannot
  // renew must stop before another worker may take over (docs/DESIGN.md,
  // "Self-expiry"). This thread touches no connection, so a frozen link to
  // PostgreSQL, which can hold the committer in a statement for as long as it
  // lasts, cannot hold it.
  const auto margin = lease_margin();
  // A new lease ends at least lease_ttl - margin after it starts: looking at
  // least that often finds every lease in time.
  const auto scan = (kind_.options.lease_ttl - margin) / 2;
  std::unique_lock lock(mu_);
  while (!watch_exit_) {
    const auto now = Clock::now();
    auto next = now + scan;
    for (auto& [id, item] : held_) {
      if (!item->running || item->stop.stop_requested() || testing::self_expiry_off.load()) continue;
      const auto stop_at = item->lease_ends - margin;
      if (now < stop_at) {
        next = std::min(next, stop_at);
        continue;
      }
      MatterLogScope scope(deps_.options.name, kind_.name, item->row.identity);
      deps_.logger->warn("kind '{}' identity '{}': its lease was not renewed (PostgreSQL unreachable or slow) and may "
                         "be taken over in {}ms; requesting the attempt to stop",
                         kind_.name, item->row.identity,
                         std::max<std::int64_t>(0, std::chrono::duration_cast<std::chrono::milliseconds>(
                                                        item->lease_ends - now).count()));
      metrics_.lease_expiry_stops.fetch_add(1, std::memory_order_relaxed);
      item->stop.request_stop();
    }
    watch_cv_.wait_until(lock, next, [&] { return watch_exit_; });
  }
}

void WorkStreamEngine::shut_down() {
  std::unique_lock lock(mu_);
  // Queued but not started: release at once.
  for (auto& queue : ready_) {
    for (auto& item : queue) {
      if (item->abandoned) continue;
      item->abandoned = true;
      done_.push_back(released(item->row));
    }
    queue.clear();
  }
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
