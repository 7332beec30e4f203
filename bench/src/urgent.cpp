// dmm_bench urgent: high-priority single notifies while a bulk backlog drains
// (issue 15, "Priority"). Latency is from the start of the notify() call to
// the start of materialize(), as in the latency case; only notifies made
// while the backlog drained count.
#include <fmt/format.h>
#include <limits>
#include <stdexcept>
#include <thread>
#include <unordered_map>

#include "harness.hpp"

namespace bench {
namespace {

// Waits for the worker's "<tag> <ns>" line; returns <ns>.
std::int64_t wait_line(Child& worker, const std::string& tag) {
  const auto prefix = tag + " ";
  while (true) {
    auto line = worker.read_line();
    if (line.rfind(prefix, 0) == 0) return std::stoll(line.substr(prefix.size()));
  }
}

}  // namespace

// N normal matters notified in bulk before the worker starts; once it has
// started the first of them, `rate` high notifies per second until it has
// started the last. Calls made after that are not counted: nothing was left
// for them to overtake.
int run_urgent(const Common& c, long backlog, double rate, int threads, const std::string& tmp) {
  pqxx::connection conn(c.postgres);
  const std::string latency_file = tmp + "/urgent-" + c.bucket + ".txt";
  {
    auto bucket = open_bucket(c);  // migrates, creates the stream and consumers
    drop_bucket_rows(conn, c.bucket);
    const auto t0 = Clock::now();
    for (long i = 0; i < backlog;) bucket.notify_many(next_chunk("m-", i, backlog));
    result("notify_per_s", backlog / seconds_between(t0, Clock::now()));
  }  // closing the bucket flushes the token publishes
  auto bucket = open_bucket(c);  // the urgent notifier
  Child worker(worker_argv(c, latency_file, backlog));
  const auto running_ns = wait_running(worker);
  const auto first_ns = wait_line(worker, "backlog-first");

  NotifyCalls calls;
  std::int64_t last_ns = 0;
  {
    std::jthread notifier([&](std::stop_token stop) {
      calls = notify_steadily(bucket, "u-", {.priority = dmm::Priority::high}, rate, threads,
                              std::numeric_limits<long>::max(), Clock::now(), Clock::now() + std::chrono::minutes(10),
                              stop);
    });
    last_ns = wait_line(worker, "backlog-started");
  }  // stops and joins the notifier
  const long sent = static_cast<long>(calls.called_ns.size());
  wait_all_ready(conn, c.bucket, backlog + sent, std::chrono::seconds(120));
  worker.stop();

  std::unordered_map<std::int64_t, std::int64_t> returned;  // called ns -> returned ns
  for (long i = 0; i < sent; ++i) returned[calls.called_ns[i]] = calls.returned_ns[i];
  std::vector<std::int64_t> from_call, from_return, call;
  long timed = 0;
  for (auto [called, started] : take_timed_starts(latency_file)) {
    ++timed;
    if (called > last_ns) continue;  // made after the backlog's last start
    from_call.push_back(started - called);
    from_return.push_back(started - returned.at(called));
    call.push_back(returned.at(called) - called);
  }
  const double drain_s = (last_ns - first_ns) / 1e9;
  result("backlog", static_cast<double>(backlog));
  result("backlog_per_s", backlog / ((last_ns - running_ns) / 1e9));
  result("drain_seconds", drain_s);
  result("urgent_sent", static_cast<double>(sent));
  result("urgent_per_s", drain_s > 0 ? from_call.size() / drain_s : 0);
  result("samples", static_cast<double>(from_call.size()));
  result("p50_ms", percentile(from_call, 0.50));
  result("p99_ms", percentile(from_call, 0.99));
  result("max_ms", percentile(from_call, 1.0));
  result("from_return_p50_ms", percentile(from_return, 0.50));
  result("from_return_p99_ms", percentile(from_return, 0.99));
  result("notify_p50_ms", percentile(call, 0.50));
  result("notify_p99_ms", percentile(call, 0.99));
  drop_bucket_rows(conn, c.bucket);
  if (timed < sent) throw std::runtime_error(fmt::format("{} urgent notifies, {} started", sent, timed));
  return 0;
}

}  // namespace bench
