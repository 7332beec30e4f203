// dmm_bench's shared parts (harness.hpp).
#include "harness.hpp"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fmt/format.h>
#include <fstream>
#include <thread>
#include <unistd.h>

namespace bench {

using namespace std::chrono_literals;

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

void LatencyLog::timed(std::int64_t sent, std::int64_t started) {
  std::lock_guard lock(mu);
  sent_ns.push_back(sent);
  started_ns.push_back(started);
}

void LatencyLog::untimed(std::int64_t started) {
  std::lock_guard lock(mu);
  ++backlog_started;
  if (backlog == 0 || (backlog_started != 1 && backlog_started != backlog)) return;
  if (backlog_started == 1) std::printf("backlog-first %lld\n", static_cast<long long>(started));
  if (backlog_started == backlog) std::printf("backlog-started %lld\n", static_cast<long long>(started));
  std::fflush(stdout);
}

dmm::Result Noop::materialize(dmm::Context& ctx) {
  const auto started = now_ns();
  if (t_ns > 0)
    ctx.service<LatencyLog>().timed(t_ns, started);
  else
    ctx.service<LatencyLog>().untimed(started);
  return dmm::Result::done();
}

void result(const std::string& metric, double value) {
  std::printf("RESULT %s %.6g\n", metric.c_str(), value);
  std::fflush(stdout);
}

dmm::Bucket open_bucket(const Common& c) {
  auto bucket = dmm::Bucket::open({.name = c.bucket,
                                   .postgres = c.postgres,
                                   .nats = c.nats,
                                   .token_grace = std::chrono::milliseconds(c.token_grace_ms)});
  bucket.register_kind<Noop>(kKind,
                             {.concurrency = c.concurrency, .batch = c.batch, .history_limit = c.history_limit});
  return bucket;
}

std::vector<std::string> worker_argv(const Common& c, const std::string& latency_out, long backlog) {
  std::vector<std::string> argv = {"/proc/self/exe", "worker",   "--postgres",    c.postgres,
                                   "--nats",         c.nats,     "--bucket",      c.bucket,
                                   "--concurrency",  std::to_string(c.concurrency), "--batch",
                                   std::to_string(c.batch),
                                   "--token-grace-ms", std::to_string(c.token_grace_ms),
                                   "--history-limit", std::to_string(c.history_limit)};
  if (!latency_out.empty()) argv.insert(argv.end(), {"--latency-out", latency_out});
  if (backlog > 0) argv.insert(argv.end(), {"--backlog", std::to_string(backlog)});
  // /proc/self/exe of the child would be the child itself: resolve it here.
  char self[4096];
  const auto n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n > 0) argv[0] = std::string(self, static_cast<std::size_t>(n));
  return argv;
}

std::int64_t wait_running(Child& child) {
  while (true) {
    auto line = child.read_line();
    if (line.rfind("running ", 0) == 0) return std::stoll(line.substr(8));
  }
}

// Matters still owed work have a row in dmm.kick (it is deleted when they are
// ready or failed), and its index on (bucket, kind, kick_at) finds them.
// Counting them costs the server real CPU, so it counts at most every 500 ms
// (to estimate when the work ends) and in between only asks whether any is
// left, more often near the end.
Clock::time_point wait_all_ready(pqxx::connection& conn, const std::string& bucket, long expected,
                                 std::chrono::seconds timeout) {
  const auto deadline = Clock::now() + timeout;
  double per_ms = 0;  // rows finished per ms, from the last two counts
  long counted = -1;
  auto counted_at = Clock::now();
  while (Clock::now() < deadline) {
    pqxx::nontransaction tx(conn);
    const auto now = Clock::now();
    bool any_left;
    if (counted < 0 || now - counted_at >= 500ms) {
      const long left = tx.exec_params1("SELECT count(*) FROM dmm.kick WHERE bucket = $1 AND kind = $2",
                                        bucket, kKind)[0]
                            .as<long>();
      if (counted > left)
        per_ms = double(counted - left) / std::chrono::duration<double, std::milli>(now - counted_at).count();
      counted = left, counted_at = now, any_left = left > 0;
    } else {
      any_left = tx.exec_params1("SELECT EXISTS (SELECT 1 FROM dmm.kick WHERE bucket = $1 AND kind = $2)",
                                 bucket, kKind)[0]
                     .as<bool>();
    }
    const auto at = Clock::now();
    if (!any_left) {
      const long ready = tx.exec_params1("SELECT count(*) FROM dmm.matter WHERE bucket = $1 AND kind = $2 AND phase = "
                                         "'ready' AND generation = materialized_generation",
                                         bucket, kKind)[0]
                             .as<long>();
      if (ready >= expected) return at;
    }
    auto pause = 50ms;
    if (per_ms > 0) {
      const double eta_ms = counted / per_ms - std::chrono::duration<double, std::milli>(at - counted_at).count();
      pause = std::chrono::milliseconds(static_cast<long>(std::max(0.0, eta_ms) / 2));
    }
    std::this_thread::sleep_for(std::clamp<std::chrono::milliseconds>(pause, 5ms, 250ms));
  }
  throw std::runtime_error(fmt::format("bucket {}: not every matter was ready after {}s", bucket, timeout.count()));
}

void drop_bucket_rows(pqxx::connection& conn, const std::string& bucket) {
  pqxx::nontransaction tx(conn);
  tx.exec_params("DELETE FROM dmm.matter WHERE bucket = $1", bucket);
  tx.exec_params("DELETE FROM dmm.kick WHERE bucket = $1", bucket);
  // Attempt history (migration 0002), so that every run starts alike.
  if (!tx.exec1("SELECT to_regclass('dmm.attempt') IS NULL")[0].as<bool>())
    tx.exec_params("DELETE FROM dmm.attempt WHERE bucket = $1", bucket);
  tx.exec("VACUUM ANALYZE dmm.matter");
}

double seconds_between(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

std::vector<Noop> next_chunk(const char* prefix, long& i, long n) {
  std::vector<Noop> chunk;
  for (long j = 0; j < 10'000 && i < n; ++j, ++i) chunk.push_back({fmt::format("{}{}", prefix, i), 0});
  return chunk;
}

double percentile(std::vector<std::int64_t>& v, double p) {
  if (v.empty()) return 0;
  const auto k = static_cast<std::size_t>(std::min<double>(v.size() - 1, p * (v.size() - 1) + 0.5));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k] / 1e6;
}

std::vector<std::pair<std::int64_t, std::int64_t>> take_timed_starts(const std::string& file) {
  std::vector<std::pair<std::int64_t, std::int64_t>> starts;
  std::ifstream in(file);
  for (std::int64_t sent, started; in >> sent >> started;) starts.emplace_back(sent, started);
  std::remove(file.c_str());
  return starts;
}

NotifyCalls notify_steadily(dmm::Bucket& bucket, const std::string& prefix, const dmm::NotifyOptions& options,
                            double rate, int threads, long most, Clock::time_point start, Clock::time_point stop_at,
                            std::stop_token stop) {
  std::atomic<long> next{0};
  std::mutex mu;
  NotifyCalls calls;  // guarded by mu
  {
    std::vector<std::jthread> notifiers;
    for (int t = 0; t < threads; ++t)
      notifiers.emplace_back([&] {
        for (long k; (k = next++) < most;) {
          std::this_thread::sleep_until(start + std::chrono::nanoseconds(static_cast<std::int64_t>(k * 1e9 / rate)));
          if (Clock::now() >= stop_at || stop.stop_requested()) break;
          const auto t0 = now_ns();
          bucket.notify(Noop{fmt::format("{}{}", prefix, k), t0}, options);
          const auto t1 = now_ns();
          std::lock_guard lock(mu);
          calls.called_ns.push_back(t0);
          calls.returned_ns.push_back(t1);
        }
      });
  }  // joins
  return calls;
}

}  // namespace bench
