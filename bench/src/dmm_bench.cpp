// dmm's side of scripts/bench: a no-op worker process, and drivers that measure
// bulk throughput, Notify→materialize-start latency and worker memory.
// Each driver run prints "RESULT <metric> <value>" lines on stdout.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <dmm/dev_env.hpp>
#include <dmm/dmm.hpp>
#include <fmt/format.h>
#include <fstream>
#include <mutex>
#include <nats/nats.h>
#include <pqxx/pqxx>
#include <spdlog/spdlog.h>
#include <thread>
#include <tuple>

#include "process.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// CLOCK_MONOTONIC in ns: the same clock in every process of the machine, so
// a notify time taken in the driver can be compared in the worker.
std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

// Every materialize-start latency seen by this worker, in ns.
struct LatencyLog {
  std::mutex mu;
  std::vector<std::int64_t> ns;
  void add(std::int64_t v) {
    std::lock_guard lock(mu);
    ns.push_back(v);
  }
};

// The no-op materializer. t_ns > 0: the driver's clock when it called notify.
struct Noop {
  std::string id;
  std::int64_t t_ns = 0;
  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context& ctx) {
    if (t_ns > 0) ctx.service<LatencyLog>().add(now_ns() - t_ns);
    return dmm::Result::done();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Noop, id, t_ns)

constexpr const char* kKind = "noop";

struct Common {
  std::string postgres, nats, bucket;
  int concurrency = 64, batch = 256;
  long token_grace_ms = 5000;  // dmm's default
  int history_limit = 10;      // dmm's default; 0 turns the attempt history off
};

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

// ---------------------------------------------------------------- worker

int run_worker(const Common& c, const std::string& latency_out) {
  dmm::StopSignals signals;  // SIGTERM stops the bucket; before any thread starts
  auto bucket = open_bucket(c);
  auto latencies = std::make_shared<LatencyLog>();
  bucket.provide(latencies);
  std::printf("running %lld\n", static_cast<long long>(now_ns()));
  std::fflush(stdout);
  signals.run(bucket);
  if (!latency_out.empty()) {
    std::ofstream out(latency_out);
    std::lock_guard lock(latencies->mu);
    for (auto v : latencies->ns) out << v << '\n';
  }
  return 0;
}

// ---------------------------------------------------------------- driver helpers

std::vector<std::string> worker_argv(const Common& c, const std::string& latency_out = "") {
  std::vector<std::string> argv = {"/proc/self/exe", "worker",   "--postgres",    c.postgres,
                                   "--nats",         c.nats,     "--bucket",      c.bucket,
                                   "--concurrency",  std::to_string(c.concurrency), "--batch",
                                   std::to_string(c.batch),
                                   "--token-grace-ms", std::to_string(c.token_grace_ms),
                                   "--history-limit", std::to_string(c.history_limit)};
  if (!latency_out.empty()) argv.insert(argv.end(), {"--latency-out", latency_out});
  // /proc/self/exe of the child would be the child itself: resolve it here.
  char self[4096];
  const auto n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n > 0) argv[0] = std::string(self, static_cast<std::size_t>(n));
  return argv;
}

// Waits for the worker's "running <ns>" line; returns <ns>.
std::int64_t wait_running(bench::Child& child) {
  while (true) {
    auto line = child.read_line();
    if (line.rfind("running ", 0) == 0) return std::stoll(line.substr(8));
  }
}

// Waits until every matter of the bucket is ready at its latest generation,
// as stored in dmm.matter; returns when that was seen. Matters still owed work
// have a row in dmm.kick (it is deleted when they are ready or failed), and
// its index on (bucket, kind, kick_at) finds them. Counting them costs the server real
// CPU, so it counts at most every 500 ms (to estimate when the work ends)
// and in between only asks whether any is left, more often near the end.
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

// ---------------------------------------------------------------- throughput

// The next up to 10,000 no-op matters "<prefix><i>" of n, advancing i: the
// size of one bulk notify call.
std::vector<Noop> next_chunk(const char* prefix, long& i, long n) {
  std::vector<Noop> chunk;
  for (long j = 0; j < 10'000 && i < n; ++j, ++i) chunk.push_back({fmt::format("{}{}", prefix, i), 0});
  return chunk;
}


// Creates the bucket's stream as dmm would (WorkQueue, MaxMsgsPerSubject = 1)
// but with DiscardNewPerSubject: a publish for a matter whose token is still
// pending is rejected instead of replacing it (FACTS.md). dmm accepts such a
// stream, so the alternative can be measured without changing dmm.
void create_discard_new_stream(const Common& c) {
  natsConnection* nc = nullptr;
  jsCtx* js = nullptr;
  if (natsConnection_ConnectTo(&nc, c.nats.c_str()) != NATS_OK || natsConnection_JetStream(&js, nc, nullptr) != NATS_OK)
    throw std::runtime_error("cannot connect to NATS at " + c.nats);
  const std::string name = "DMM_" + c.bucket, subjects = "dmm." + c.bucket + ".>";
  const char* subject_list[] = {subjects.c_str()};
  js_DeleteStream(js, name.c_str(), nullptr, nullptr);
  jsStreamConfig cfg;
  jsStreamConfig_Init(&cfg);
  cfg.Name = name.c_str();
  cfg.Subjects = subject_list;
  cfg.SubjectsLen = 1;
  cfg.Retention = js_WorkQueuePolicy;
  cfg.MaxMsgsPerSubject = 1;
  cfg.Discard = js_DiscardNew;
  cfg.DiscardNewPerSubject = true;
  cfg.Storage = js_FileStorage;
  const natsStatus s = js_AddStream(nullptr, js, &cfg, nullptr, nullptr);
  jsCtx_Destroy(js);
  natsConnection_Destroy(nc);
  if (s != NATS_OK) throw std::runtime_error(std::string("cannot create stream: ") + natsStatus_GetText(s));
}

int run_throughput(const Common& c, long n, int workers, bool analyze_during_notify, bool discard_new) {
  pqxx::connection conn(c.postgres);
  if (discard_new) create_discard_new_stream(c);
  {
    auto bucket = open_bucket(c);  // migrates, creates the stream and consumer
    drop_bucket_rows(conn, c.bucket);
    const auto t0 = Clock::now();
    for (long i = 0; i < n;) {
      bucket.notify_many(next_chunk("m-", i, n));
      // What the bench did until dmm's connections stopped using sequential
      // scans (bench/results.md, round 2, items 5 and 6); no user
      // does this, so it is off unless asked for.
      if (analyze_during_notify) pqxx::nontransaction(conn).exec("ANALYZE dmm.matter");
    }
    const auto t1 = Clock::now();
    result("notify_per_s", n / seconds_between(t0, t1));
  }  // closing the bucket flushes the token publishes
  if (analyze_during_notify) pqxx::nontransaction(conn).exec("ANALYZE dmm.matter");

  std::vector<std::unique_ptr<bench::Child>> children;
  for (int w = 0; w < workers; ++w) children.push_back(std::make_unique<bench::Child>(worker_argv(c)));
  std::int64_t start_ns = INT64_MAX;
  for (auto& child : children) start_ns = std::min(start_ns, wait_running(*child));
  const auto start = Clock::time_point(std::chrono::nanoseconds(start_ns));
  const auto done = wait_all_ready(conn, c.bucket, n, std::chrono::seconds(600));
  long rss = 0;
  for (auto& child : children) rss = std::max(rss, child->hwm_kib());
  for (auto& child : children) child->stop();
  result("materialize_per_s", n / seconds_between(start, done));
  result("seconds", seconds_between(start, done));
  result("worker_hwm_kib", rss);
  drop_bucket_rows(conn, c.bucket);
  return 0;
}

// ---------------------------------------------------------------- latency

double percentile(std::vector<std::int64_t>& v, double p) {
  if (v.empty()) return 0;
  const auto k = static_cast<std::size_t>(std::min<double>(v.size() - 1, p * (v.size() - 1) + 0.5));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k] / 1e6;
}

int run_latency(const Common& c, double rate, double seconds, int threads, const std::string& tmp) {
  pqxx::connection conn(c.postgres);
  const std::string latency_file = tmp + "/latency-" + c.bucket + ".txt";
  auto bucket = open_bucket(c);  // migrates first: the database may be new
  drop_bucket_rows(conn, c.bucket);
  bench::Child worker(worker_argv(c, latency_file));
  wait_running(worker);

  // Open loop on a fixed schedule for `seconds`; notifies that could not be
  // started by then (the notifiers fell behind) are not sent.
  const long scheduled = std::max<long>(1, static_cast<long>(rate * seconds));
  std::atomic<long> next{0}, total{0};
  LatencyLog notify_ns;  // how long each notify() call took
  const auto start = Clock::now() + 20ms;
  const auto stop_at = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  std::vector<std::jthread> notifiers;
  for (int t = 0; t < threads; ++t)
    notifiers.emplace_back([&] {
      for (long k; (k = next++) < scheduled;) {
        std::this_thread::sleep_until(start + std::chrono::nanoseconds(static_cast<std::int64_t>(k * 1e9 / rate)));
        if (Clock::now() >= stop_at) break;
        const auto t0 = now_ns();
        bucket.notify(Noop{fmt::format("l-{}", k), t0});
        notify_ns.add(now_ns() - t0);
        ++total;
      }
    });
  notifiers.clear();
  const auto sent = Clock::now();
  wait_all_ready(conn, c.bucket, total.load(), std::chrono::seconds(120));
  worker.stop();

  std::vector<std::int64_t> ns;
  std::ifstream in(latency_file);
  for (std::int64_t v; in >> v;) ns.push_back(v);
  std::remove(latency_file.c_str());
  result("offered_per_s", rate);
  result("achieved_per_s", static_cast<double>(total) / seconds_between(start, sent));
  result("samples", static_cast<double>(ns.size()));
  result("p50_ms", percentile(ns, 0.50));
  result("p99_ms", percentile(ns, 0.99));
  result("max_ms", percentile(ns, 1.0));
  result("notify_p50_ms", percentile(notify_ns.ns, 0.50));
  result("notify_p99_ms", percentile(notify_ns.ns, 0.99));
  drop_bucket_rows(conn, c.bucket);
  return ns.size() >= static_cast<std::size_t>(total.load()) ? 0 : 1;
}

// ---------------------------------------------------------------- burst

// A running worker, then N matters notified in one application transaction
// (Bucket::notify_many(txn, ...)): their tokens come from the worker's sweeper,
// woken by the commit. The worker starts while dmm.kick is empty and
// vacuumed, as it is after every drain, so its statements are planned on
// those statistics (bench/results.md, round 5: such a plan once made one
// sweep of 100,000 kicks take 20-40 s).
int run_burst(const Common& c, long n) {
  pqxx::connection conn(c.postgres);
  auto bucket = open_bucket(c);  // migrates first: the database may be new
  drop_bucket_rows(conn, c.bucket);
  pqxx::nontransaction(conn).exec("VACUUM ANALYZE dmm.kick");
  bench::Child worker(worker_argv(c));
  wait_running(worker);
  // Its sweeper's first sweep, which plans the statement, runs at once; a
  // second is enough for it (a bench run, not a test: nothing to wait on).
  std::this_thread::sleep_for(1s);
  const auto t0 = Clock::now();
  {
    pqxx::work txn(conn);
    for (long i = 0; i < n;) bucket.notify_many(txn, next_chunk("b-", i, n));
    txn.commit();
  }
  const auto committed = Clock::now();
  const auto done = wait_all_ready(conn, c.bucket, n, std::chrono::seconds(600));
  worker.stop();
  result("notify_in_txn_per_s", n / seconds_between(t0, committed));
  result("drain_per_s", n / seconds_between(committed, done));
  result("drain_seconds", seconds_between(committed, done));
  drop_bucket_rows(conn, c.bucket);
  return 0;
}

// ---------------------------------------------------------------- memory

// Worker RSS with `sizes` matters stored (ready: written as a finished
// materialization leaves them) and only `due` of them owed work.
int run_memory(const Common& c, const std::vector<long>& sizes, int due, int runs, int settle_ms) {
  pqxx::connection conn(c.postgres);
  auto bucket = open_bucket(c);
  drop_bucket_rows(conn, c.bucket);
  long stored = 0;
  for (long size : sizes) {
    for (; stored < size;) {
      const long upto = std::min(size, stored + 200'000);
      pqxx::work tx(conn);
      tx.exec_params(R"sql(
INSERT INTO dmm.matter (bucket, kind, identity, state, generation, materialized_generation, phase)
SELECT $1, $2, 'm-' || g, jsonb_build_object('id', 'm-' || g, 't_ns', 0), 1, 1, 'ready'
  FROM generate_series($3::bigint, $4::bigint) g)sql",
                     c.bucket, kKind, stored, upto - 1);
      tx.commit();
      stored = upto;
    }
    pqxx::nontransaction(conn).exec("VACUUM ANALYZE dmm.matter");
    for (int run = 1; run <= runs; ++run) {
      bench::Child worker(worker_argv(c));
      wait_running(worker);
      std::vector<Noop> owed;
      for (int i = 0; i < due; ++i) owed.push_back({fmt::format("m-{}", i * (size / due)), run});
      bucket.notify_many(owed);
      wait_all_ready(conn, c.bucket, size, std::chrono::seconds(120));
      std::this_thread::sleep_for(std::chrono::milliseconds(settle_ms));
      result(fmt::format("rss_kib_{}_run{}", size, run), worker.rss_kib());
      result(fmt::format("hwm_kib_{}_run{}", size, run), worker.hwm_kib());
      worker.stop();
    }
  }
  drop_bucket_rows(conn, c.bucket);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"dmm benchmark: worker, throughput, latency, burst, memory (run by scripts/bench)"};
  app.require_subcommand(1);
  Common c;
  auto add_common = [&](CLI::App* sub) {
    // Not ->envname(): every subcommand binds the same Common, and CLI11
    // 2.1 fills the options of the subcommands not used from the
    // environment too, over the one given on the command line.
    sub->add_option("--postgres", c.postgres, "PostgreSQL URL (default: $DMM_POSTGRES_URL or .dmm/env)");
    sub->add_option("--nats", c.nats, "NATS URL (default: $DMM_NATS_URL or .dmm/env)");
    sub->add_option("--bucket", c.bucket)->required();
    sub->add_option("--concurrency", c.concurrency, "materializations at once per process")->capture_default_str();
    sub->add_option("--batch", c.batch, "tokens fetched and claimed per round trip")->capture_default_str();
    sub->add_option("--token-grace-ms", c.token_grace_ms, "BucketOptions::token_grace")->capture_default_str();
    sub->add_option("--history-limit", c.history_limit, "KindOptions::history_limit (0: no attempt history)")
        ->capture_default_str();
  };
  std::string latency_out, tmp = "/tmp";
  long n = 100'000;
  bool analyze = false, discard_new = false;
  int workers = 1, threads = 4, due = 100, runs = 3, settle_ms = 3000;
  double rate = 1000, seconds = 10;
  std::vector<long> sizes = {10'000, 100'000, 1'000'000};

  auto* worker = app.add_subcommand("worker", "a no-op worker process (SIGTERM stops it)");
  add_common(worker);
  worker->add_option("--latency-out", latency_out, "write materialize-start latencies (ns) here at exit");

  auto* throughput = app.add_subcommand("throughput", "notify N in bulk, then time W worker processes");
  add_common(throughput);
  throughput->add_option("--n", n)->capture_default_str();
  throughput->add_option("--workers", workers)->capture_default_str();
  throughput->add_flag("--discard-new-per-subject", discard_new,
                       "create the stream with DiscardNewPerSubject first (an alternative to measure)");
  throughput->add_flag("--analyze", analyze, "ANALYZE dmm.matter between bulk notifies and before the workers start");

  auto* latency = app.add_subcommand("latency", "single notifies at a steady rate; Notify->materialize-start");
  add_common(latency);
  latency->add_option("--rate", rate, "notifies per second")->capture_default_str();
  latency->add_option("--seconds", seconds)->capture_default_str();
  latency->add_option("--threads", threads, "notifying threads")->capture_default_str();
  latency->add_option("--tmp", tmp)->capture_default_str();

  auto* burst = app.add_subcommand("burst", "a running worker, then N notified in one transaction (sweeper's tokens)");
  add_common(burst);
  burst->add_option("--n", n)->capture_default_str();

  auto* memory = app.add_subcommand("memory", "worker RSS with many stored matters, few due");
  add_common(memory);
  memory->add_option("--sizes", sizes)->delimiter(',')->capture_default_str();
  memory->add_option("--due", due)->capture_default_str();
  memory->add_option("--runs", runs)->capture_default_str();
  memory->add_option("--settle-ms", settle_ms)->capture_default_str();

  CLI11_PARSE(app, argc, argv);
  for (auto [value, env, option] : {std::tuple{&c.postgres, "DMM_POSTGRES_URL", "--postgres"},
                                    std::tuple{&c.nats, "DMM_NATS_URL", "--nats"}}) {
    *value = dmm::dev_env_setting(*value, env);
    if (value->empty()) {
      std::fprintf(stderr, "dmm_bench: %s is required (or set %s, or start local servers with scripts/dev-env up)\n",
                   option, env);
      return 2;
    }
  }
  spdlog::set_level(spdlog::level::warn);
  try {
    if (*worker) return run_worker(c, latency_out);
    if (*throughput) return run_throughput(c, n, workers, analyze, discard_new);
    if (*latency) return run_latency(c, rate, seconds, threads, tmp);
    if (*memory) return run_memory(c, sizes, due, runs, settle_ms);
    if (*burst) return run_burst(c, n);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dmm_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
