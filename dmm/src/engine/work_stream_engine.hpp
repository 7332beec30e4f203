// The worker loop of one kind (see dmm/work_stream.hpp for the contract).
//
// Threads while work() runs:
// - fetchers (run_fetcher), one per priority class: pull the class's tokens
//   while there is room for them, and no higher class has tokens waiting;
//   the high class's fetcher claims its own (claims_own);
// - dispatcher (run_dispatcher, the caller of work()): take fetched tokens,
//   highest class first, claim their matters in one statement, ack the
//   tokens, queue the claimed matters by class (docs/DESIGN.md, "Priority");
// - executors (run_executor, KindOptions::concurrency of them): run
//   materialize/finalize (attempt.hpp);
// - committer (run_committer): write outcomes back in batches (fenced by
//   lease epoch), publish tokens owed, and renew every held lease each third
//   of the TTL;
// - sweeper: re-send tokens whose kick_at passed (sweeper.cpp).
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <stop_token>
#include <string>
#include <unordered_map>
#include <vector>

#include "dmm/options.hpp"
#include "engine/deps.hpp"
#include "engine/metrics.hpp"
#include "protocol/names.hpp"
#include "protocol/vocabulary.hpp"
#include "store/matters.hpp"
#include "tokens/tokens.hpp"

namespace dmm::detail {

class WorkStreamEngine {
 public:
  WorkStreamEngine(const EngineDeps& deps, const KindSpec& kind);
  ~WorkStreamEngine();

  void work();
  void stop();
  // Blocks until no work() is running.
  void wait_idle();
  const std::string& kind() const;
  // True while work() runs with a live subscription to the consumer of every
  // class of the kind.
  bool bound() const { return bound_.load() == static_cast<int>(kPriorities.size()); }

 private:
  struct Item {
    Claimed row;
    Priority priority = Priority::normal;  // the highest class of the tokens that named it
    std::stop_source stop;
    bool running = false;    // guarded by mu_
    bool abandoned = false;  // guarded by mu_: lease lost or released; drop the outcome
    bool outcome_queued = false;  // guarded by mu_: the attempt's outcome waits for a write-back
    // Guarded by mu_: by this process's clock, when the lease may end at the
    // earliest: the sending of the statement that last set it (the claim or a
    // heartbeat) plus lease_ttl (docs/DESIGN.md, "Self-expiry").
    std::chrono::steady_clock::time_point lease_ends;
  };

  // A fetched token and the row ids it names, waiting for the dispatcher.
  struct Fetched {
    // The source that fetched the token, kept while its tokens live
    // (declared first, so destroyed after the token); an ack is a publish
    // on the bucket's connection.
    std::shared_ptr<TokenSource> source;
    Token token;
    std::vector<std::int64_t> ids;
    Priority priority;
    std::chrono::steady_clock::time_point at;
  };

  void run_fetcher(Priority priority, std::stop_token stop);
  // Whether the fetcher of `priority` claims the matters of its tokens itself
  // (mu_ held): the high class of a kind without global limits, while this
  // process holds less than prefetch + batch matters.
  bool claims_own(Priority priority) const;
  // Whether the fetcher of `priority` may pull now (mu_ held).
  bool may_fetch(Priority priority) const;
  void run_dispatcher(std::stop_token stop);
  // Up to about `room` matters' worth of fetched tokens, highest class first,
  // oldest first within a class; of one class only for a fair kind, whose
  // claim picks matters of one class (mu_ held).
  std::vector<Fetched> take_fetched(int room);
  // Fetched tokens waiting longer than a claim could take (their class kept
  // losing to higher ones), handed back to the stream for any worker (mu_
  // held; returns them to be nak'ed outside the lock).
  std::vector<Fetched> take_stale(std::chrono::steady_clock::time_point now);
  // Claims the matters the tokens name, at most `room` of them (on the
  // dispatcher's or the high fetcher's connection; mu_ not held). Tokens
  // naming matters that found no global slot or rate token go back to the
  // front of fetched_, for the next try.
  void claim_tokens(pqxx::connection& conn, std::vector<Fetched>& tokens, int room);
  // The kind's global limits, as the claim takes them.
  ClaimLimits limits() const;
  // Whether the kind has a fairness key (KindOptions::fairness_key, tenant()).
  bool fair() const { return kind_.options.fairness_key || kind_.hooks.tenant; }
  // How many matters the dispatcher may claim now (mu_ held).
  int claim_room() const;
  // Most matters held and fetched at once: `capacity_`, or for a kind with
  // global limits, twice its executors.
  int fetch_capacity() const;
  // With global limits: whether a claim may find room under them now (mu_
  // held): this process gave a slot back, or kLimitPoll passed.
  bool may_claim_under_limits(std::chrono::steady_clock::time_point now) const;
  void run_executor();  // one of KindOptions::concurrency
  Outcome attempt(Item& item);
  void run_committer();
  void renew_leases(pqxx::connection& conn);
  // Requests the stop token of each running attempt lease_margin before its
  // lease may end, unless a heartbeat renewed it meanwhile (self-expiry).
  void run_lease_watch();
  // lease_margin, or its default: a third of lease_ttl.
  std::chrono::milliseconds lease_margin() const;
  void shut_down();

  const EngineDeps deps_;  // constant; what it points to outlives this engine
  const KindSpec& kind_;   // constant; outlives this engine
  KindMetrics& metrics_;   // thread-safe; owned by deps_.metrics
  std::atomic<int> bound_{0};  // fetchers with a live subscription
  const int capacity_;     // most matters held (claimed, running or not yet written back)
  std::stop_source stop_;  // sticky: a stopped stream stays stopped

  std::mutex mu_;
  std::condition_variable ready_cv_;  // ready_ grew or executors_exit_
  std::condition_variable done_cv_;   // done_ grew or committer_exit_
  std::condition_variable room_cv_;   // held_ shrank or fetched_ grew: the dispatcher may claim
  std::condition_variable fetch_cv_;  // held_ or fetched_ shrank: a fetcher may pull
  std::condition_variable idle_cv_;   // running_ dropped, or working_ ended
  // Guarded by mu_, by index_of(Priority): claimed, waiting for an executor.
  std::array<std::deque<std::shared_ptr<Item>>, kPriorities.size()> ready_;
  // Guarded by mu_, by index_of(Priority): fetched, waiting to be claimed.
  std::array<std::deque<Fetched>, kPriorities.size()> fetched_;
  std::size_t fetched_ids_ = 0;  // guarded by mu_: row ids in fetched_
  // Guarded by mu_: matters per token lately, which sizes fetches. It starts
  // high: fetching too few tokens costs a round trip, too many hands tokens
  // back.
  double ids_per_token_ = static_cast<double>(kMaxIdsPerToken);
  // Guarded by mu_, with global limits: false when the last claim found no
  // free slot or no rate token for some matter; claim again once this
  // process gave slots back (a write-back), or at limits_retry_at_ (another
  // process may have, or the rate has grown).
  bool limits_eased_ = true;
  std::chrono::steady_clock::time_point limits_retry_at_{};
  // Guarded by mu_, by index_of(Priority): a fair kind's place in its
  // rotation across keys (docs/DESIGN.md, "Fairness"); the dispatcher and
  // the high fetcher (claims_own) claim.
  std::array<std::string, kPriorities.size()> fair_after_;
  std::vector<Outcome> done_;                                      // guarded by mu_
  std::unordered_map<std::int64_t, std::shared_ptr<Item>> held_;  // guarded by mu_: every lease we hold
  int running_ = 0;                                                // guarded by mu_
  bool executors_exit_ = false;                                    // guarded by mu_
  bool committer_exit_ = false;                                    // guarded by mu_
  bool watch_exit_ = false;                                        // guarded by mu_
  std::condition_variable watch_cv_;                               // watch_exit_ was set
  bool working_ = false;                                           // guarded by mu_
};

}  // namespace dmm::detail
