// What dmm_bench's drivers share: the no-op materializer and its worker
// process, results on stdout, and waiting on the database.
#pragma once

#include <chrono>
#include <cstdint>
#include <dmm/dmm.hpp>
#include <mutex>
#include <pqxx/pqxx>
#include <stop_token>
#include <string>
#include <utility>
#include <vector>

#include "process.hpp"

namespace bench {

using Clock = std::chrono::steady_clock;

// CLOCK_MONOTONIC in ns: the same clock in every process of the machine, so
// a notify time taken in the driver can be compared in the worker.
std::int64_t now_ns();

// What a worker saw: when each timed matter (t_ns > 0) started, and when the
// first and the last of a backlog of untimed ones (t_ns == 0) did.
struct LatencyLog {
  std::mutex mu;
  std::vector<std::int64_t> sent_ns;     // guarded by mu: the driver's clock when it called notify
  std::vector<std::int64_t> started_ns;  // guarded by mu: when materialize() started, same order
  // With a backlog of this many untimed matters (constant after
  // construction; 0: none), the worker prints "backlog-first <ns>" when the
  // first of them starts and "backlog-started <ns>" when the last one does.
  long backlog = 0;
  long backlog_started = 0;  // guarded by mu

  void timed(std::int64_t sent, std::int64_t started);
  void untimed(std::int64_t started);
};

// The no-op materializer. t_ns > 0: the driver's clock when it called notify.
struct Noop {
  std::string id;
  std::int64_t t_ns = 0;
  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context& ctx);
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Noop, id, t_ns)

inline constexpr const char* kKind = "noop";

struct Common {
  std::string postgres, nats, bucket;
  int concurrency = 64, batch = 256;
  long token_grace_ms = 5000;  // dmm's default
  int history_limit = 10;      // dmm's default; 0 turns the attempt history off
};

void result(const std::string& metric, double value);
dmm::Bucket open_bucket(const Common& c);

// The arguments of a worker process of this program ("worker" subcommand).
// latency_out: where it writes "<sent ns> <started ns>" per timed start at
// exit; backlog: see LatencyLog::backlog.
std::vector<std::string> worker_argv(const Common& c, const std::string& latency_out = "", long backlog = 0);
// Waits for the worker's "running <ns>" line; returns <ns>.
std::int64_t wait_running(Child& child);
// Waits until every matter of the bucket is ready at its latest generation;
// returns when that was seen.
Clock::time_point wait_all_ready(pqxx::connection& conn, const std::string& bucket, long expected,
                                 std::chrono::seconds timeout);
// Deletes the bucket's matters, kicks and attempt history, then VACUUM ANALYZE.
void drop_bucket_rows(pqxx::connection& conn, const std::string& bucket);
double seconds_between(Clock::time_point a, Clock::time_point b);
// The next up to 10,000 no-op matters "<prefix><i>" of n, advancing i: the
// size of one bulk notify call.
std::vector<Noop> next_chunk(const char* prefix, long& i, long n);
// The p-quantile (0..1) of values in ns, in ms (nearest rank); 0 if empty.
double percentile(std::vector<std::int64_t>& v, double p);

// The worker's latency_out file as (sent ns, started ns) per timed start;
// deletes the file.
std::vector<std::pair<std::int64_t, std::int64_t>> take_timed_starts(const std::string& file);

// Each single notify a driver made: when the call started and returned (now_ns()).
struct NotifyCalls {
  std::vector<std::int64_t> called_ns, returned_ns;  // same order
};
// Single notifies of Noop{"<prefix><k>", t_ns = the clock at the call} on a
// fixed schedule, the k-th at start + k / rate, from `threads` threads (open
// loop: a slow call does not delay the others' schedule). Ends after `most`
// calls, at `stop_at`, or once `stop` is requested: calls not started by
// then are not made.
NotifyCalls notify_steadily(dmm::Bucket& bucket, const std::string& prefix, const dmm::NotifyOptions& options,
                            double rate, int threads, long most, Clock::time_point start, Clock::time_point stop_at,
                            std::stop_token stop = {});

// The drivers with a file of their own.
int run_urgent(const Common& c, long backlog, double rate, int threads, const std::string& tmp);

}  // namespace bench
