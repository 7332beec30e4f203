// dmm's side of scripts/bench: a no-op worker process, and drivers that measure
// bulk throughput, Notify→materialize-start latency and worker memory (and,
// in their own files, urgent notifies behind a backlog).
// Each driver run prints "RESULT <metric> <value>" lines on stdout.
#include <CLI/CLI.hpp>
#include <algorithm>
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

#include "harness.hpp"
#include "process.hpp"

namespace bench {
namespace {

using namespace std::chrono_literals;

// ---------------------------------------------------------------- worker

int run_worker(const Common& c, const std::string& latency_out, long backlog) {
  dmm::StopSignals signals;  // SIGTERM stops the bucket; before any thread starts
  auto bucket = open_bucket(c);
  auto latencies = std::make_shared<LatencyLog>();
  latencies->backlog = backlog;
  bucket.provide(latencies);
  std::printf("running %lld\n", static_cast<long long>(now_ns()));
  std::fflush(stdout);
  signals.run(bucket);
  if (!latency_out.empty()) {
    std::ofstream out(latency_out);
    std::lock_guard lock(latencies->mu);
    for (std::size_t i = 0; i < latencies->sent_ns.size(); ++i)
      out << latencies->sent_ns[i] << ' ' << latencies->started_ns[i] << '\n';
  }
  return 0;
}

// ---------------------------------------------------------------- throughput

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
  const auto start = Clock::now() + 20ms;
  const auto stop_at = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  auto calls = notify_steadily(bucket, "l-", {}, rate, threads, scheduled, start, stop_at);
  const auto sent = Clock::now();
  const long total = static_cast<long>(calls.called_ns.size());
  std::vector<std::int64_t> notify_ns;  // how long each notify() call took
  for (long i = 0; i < total; ++i) notify_ns.push_back(calls.returned_ns[i] - calls.called_ns[i]);
  wait_all_ready(conn, c.bucket, total, std::chrono::seconds(120));
  worker.stop();

  std::vector<std::int64_t> ns;
  for (auto [called, started] : take_timed_starts(latency_file)) ns.push_back(started - called);
  result("offered_per_s", rate);
  result("achieved_per_s", total / seconds_between(start, sent));
  result("samples", static_cast<double>(ns.size()));
  result("p50_ms", percentile(ns, 0.50));
  result("p99_ms", percentile(ns, 0.99));
  result("max_ms", percentile(ns, 1.0));
  result("notify_p50_ms", percentile(notify_ns, 0.50));
  result("notify_p99_ms", percentile(notify_ns, 0.99));
  drop_bucket_rows(conn, c.bucket);
  return ns.size() >= static_cast<std::size_t>(total) ? 0 : 1;
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
}  // namespace bench

int main(int argc, char** argv) {
  using namespace bench;
  CLI::App app{"dmm benchmark: worker, throughput, latency, burst, urgent, memory (run by scripts/bench)"};
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
  long n = 100'000, backlog = 0;
  bool analyze = false, discard_new = false;
  int workers = 1, threads = 4, due = 100, runs = 3, settle_ms = 3000;
  double rate = 1000, urgent_rate = 200, seconds = 10;
  std::vector<long> sizes = {10'000, 100'000, 1'000'000};

  auto* worker = app.add_subcommand("worker", "a no-op worker process (SIGTERM stops it)");
  add_common(worker);
  worker->add_option("--latency-out", latency_out, "write '<notify ns> <start ns>' per timed start here at exit");
  worker->add_option("--backlog", backlog, "print 'backlog-first/started <ns>' at the first and last of this many "
                                           "untimed starts");

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

  auto* urgent = app.add_subcommand("urgent", "high-priority single notifies while a bulk backlog of N drains");
  add_common(urgent);
  urgent->add_option("--n", n, "matters in the backlog (normal priority, notify_many)")->capture_default_str();
  urgent->add_option("--rate", urgent_rate, "high-priority notifies per second")->capture_default_str();
  urgent->add_option("--threads", threads, "notifying threads")->capture_default_str();
  urgent->add_option("--tmp", tmp)->capture_default_str();

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
    if (*worker) return run_worker(c, latency_out, backlog);
    if (*throughput) return run_throughput(c, n, workers, analyze, discard_new);
    if (*latency) return run_latency(c, rate, seconds, threads, tmp);
    if (*memory) return run_memory(c, sizes, due, runs, settle_ms);
    if (*burst) return run_burst(c, n);
    if (*urgent) return run_urgent(c, n, urgent_rate, threads, tmp);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dmm_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
