// The worker loop of one kind (see dmm/work_stream.hpp for the contract).
//
// Threads while work() runs:
// - dispatcher (run_dispatcher, the caller of work()): fetch tokens, claim
//   their matters in one statement, ack the tokens, queue the claimed matters;
// - executors (run_executor, KindOptions::concurrency of them): run
//   materialize/finalize (attempt.hpp);
// - committer (run_committer): write outcomes back in batches (fenced by
//   lease epoch), publish tokens owed, and renew every held lease each third
//   of the TTL;
// - sweeper: re-send tokens whose kick_at passed (sweeper.cpp).
#pragma once

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
  // True while work() runs with a live subscription to the kind's consumer.
  bool bound() const { return bound_.load(); }

 private:
  struct Item {
    Claimed row;
    std::stop_source stop;
    bool running = false;    // guarded by mu_
    bool abandoned = false;  // guarded by mu_: lease lost or released; drop the outcome
    bool outcome_queued = false;  // guarded by mu_: the attempt's outcome waits for a write-back
  };

  void run_dispatcher(std::stop_token stop);
  // Claims the matters the tokens name, at most `room` of them.
  void claim_tokens(pqxx::connection& conn, std::vector<Token>& tokens, int room);
  void run_executor();  // one of KindOptions::concurrency
  Outcome attempt(Item& item);
  void run_committer();
  void renew_leases(pqxx::connection& conn);
  // Requests the stop token of every running attempt.
  void abort_attempts(const char* why);
  void shut_down();

  const EngineDeps deps_;  // constant; what it points to outlives this engine
  const KindSpec& kind_;   // constant; outlives this engine
  KindMetrics& metrics_;   // thread-safe; owned by deps_.metrics
  std::atomic<bool> bound_{false};
  const int capacity_;     // most matters held (claimed, running or not yet written back)
  std::stop_source stop_;  // sticky: a stopped stream stays stopped
  // Dispatcher only: matters per token lately, which sizes fetches. It starts
  // high: fetching too few tokens costs a round trip, too many hands tokens
  // back.
  double ids_per_token_ = static_cast<double>(kMaxIdsPerToken);

  std::mutex mu_;
  std::condition_variable ready_cv_;  // ready_ grew or executors_exit_
  std::condition_variable done_cv_;   // done_ grew or committer_exit_
  std::condition_variable room_cv_;   // held_ shrank
  std::condition_variable idle_cv_;   // running_ dropped, or working_ ended
  std::deque<std::shared_ptr<Item>> ready_;                        // guarded by mu_
  std::vector<Outcome> done_;                                      // guarded by mu_
  std::unordered_map<std::int64_t, std::shared_ptr<Item>> held_;  // guarded by mu_: every lease we hold
  int running_ = 0;                                                // guarded by mu_
  bool executors_exit_ = false;                                    // guarded by mu_
  bool committer_exit_ = false;                                    // guarded by mu_
  bool working_ = false;                                           // guarded by mu_
};

}  // namespace dmm::detail
