// Priority classes (dmm::Priority, docs/DESIGN.md "Priority") on real
// servers: a higher class overtakes a backlog of lower ones in every process,
// through each notify path; retries, requeues and resyncs count as low; an
// unknown class is refused.
#include <catch2/catch.hpp>

#include <atomic>

#include "harness.hpp"

using namespace dmm_test;

namespace {

// Counts starts across every process of a test, and remembers how many had
// started when each watched matter started.
struct Starts {
  std::atomic<long> count{0};
  std::mutex mu;
  std::map<std::string, long> at;  // guarded by mu

  void start(const std::string& id, bool watched) {
    const long before = count.fetch_add(1);
    if (!watched) return;
    std::lock_guard lock(mu);
    at.try_emplace(id, before);
  }
  std::optional<long> started_at(const std::string& id) {
    std::lock_guard lock(mu);
    auto it = at.find(id);
    return it == at.end() ? std::nullopt : std::optional<long>(it->second);
  }
};

// A job of the backlog (or a watched one, started_at recorded). Its work
// takes `work_us`, so that a backlog lasts a while on two cores.
struct Job {
  std::string id;
  bool watched = false;
  int work_us = 0;
  int fail_times = 0;
  long retry_after_ms = 200;

  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context& ctx) {
    ctx.service<Starts>().start(id, watched);
    if (work_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(work_us));
    if (ctx.attempt() <= fail_times) throw dmm::RetryAfter(milliseconds(retry_after_ms), "planned failure");
    return dmm::Result::done();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Job, id, watched, work_us, fail_times, retry_after_ms)

constexpr int kPrefetch = 64;
constexpr int kProcesses = 2;

dmm::KindOptions backlog_kind() {
  auto options = fast_kind(4);
  options.batch = 32;
  options.prefetch = kPrefetch;
  return options;
}

// kProcesses buckets of one name, each with its own connections and worker
// id: as many worker processes.
struct Cluster {
  std::string name;
  std::shared_ptr<Starts> starts = std::make_shared<Starts>();
  std::vector<std::unique_ptr<dmm::Bucket>> buckets;
  std::vector<std::unique_ptr<Runner>> runners;

  explicit Cluster(std::string prefix) : name(unique_name(prefix)) {
    for (int i = 0; i < kProcesses; ++i) {
      buckets.push_back(std::make_unique<dmm::Bucket>(open_bucket(name)));
      buckets.back()->provide(starts);
      buckets.back()->register_kind<Job>("job", backlog_kind());
    }
  }
  dmm::Bucket& front() { return *buckets.front(); }
  void run() {
    for (auto& b : buckets) runners.push_back(std::make_unique<Runner>(*b));
  }
  std::function<std::string()> describe() {
    return [n = name] { return describe_unconverged(n); };
  }
};

std::vector<Job> backlog(int n, int work_us) {
  std::vector<Job> jobs;
  jobs.reserve(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) jobs.push_back({.id = "bulk-" + std::to_string(i), .work_us = work_us});
  return jobs;
}

// Notifies `job` with `notify` while the backlog drains, and checks that no
// more than prefetch x processes of the backlog started between the notify's
// return and the job's start (what was claimed before may run first).
void overtakes(Cluster& c, const std::string& id, const std::function<void()>& notify, long backlog_size) {
  const long before = c.starts->count.load();
  notify();
  const long returned = c.starts->count.load();
  wait_until([&] { return c.starts->started_at(id).has_value(); }, 60s, id + " to start", c.describe());
  const long started = *c.starts->started_at(id);
  INFO(id << ": notified after " << before << " starts, returned after " << returned << ", started after "
          << started << " (backlog " << backlog_size << ")");
  // The backlog was still there: the test proves something.
  REQUIRE(started < backlog_size - 2 * kPrefetch * kProcesses);
  CHECK(started - returned <= static_cast<long>(kPrefetch) * kProcesses);
}

}  // namespace

TEST_CASE("a high notify starts ahead of a normal backlog of 50,000 in every process", "[priority]") {
  constexpr int kBacklog = 50'000;
  Cluster c("prio-high");
  c.front().notify_many(backlog(kBacklog, 2000));
  c.run();
  wait_until([&] { return c.starts->count.load() > 1000; }, 60s, "the backlog to be worked", c.describe());

  overtakes(c, "urgent", [&] { c.front().notify(Job{.id = "urgent", .watched = true}, {.priority = dmm::Priority::high}); },
            kBacklog);
  // From the second process, in a batch.
  overtakes(c, "urgent-many-1", [&] {
    c.buckets.back()->notify_many(std::vector<Job>{{.id = "urgent-many-1", .watched = true},
                                                   {.id = "urgent-many-2", .watched = true}},
                                  {.priority = dmm::Priority::high});
  }, kBacklog);
  // In the caller's transaction: the sweeper publishes its token, in its class.
  overtakes(c, "urgent-txn", [&] {
    pqxx::work txn(pg());
    c.front().notify(txn, Job{.id = "urgent-txn", .watched = true}, {.priority = dmm::Priority::high});
    txn.commit();
  }, kBacklog);
}

TEST_CASE("a normal notify starts ahead of a low backlog", "[priority]") {
  constexpr int kBacklog = 20'000;
  Cluster c("prio-low");
  c.front().notify_many(backlog(kBacklog, 500), {.priority = dmm::Priority::low});
  c.run();
  wait_until([&] { return c.starts->count.load() > 500; }, 60s, "the backlog to be worked", c.describe());
  overtakes(c, "normal", [&] { c.front().notify(Job{.id = "normal", .watched = true}); }, kBacklog);
}

TEST_CASE("stats count due matters by class: a notify's own, low for a retry", "[priority]") {
  auto name = unique_name("prio-stats");
  auto bucket = open_bucket(name);
  auto starts = std::make_shared<Starts>();
  bucket.provide(starts);
  bucket.register_kind<Job>("job", fast_kind());
  const auto due = [&] {
    auto stats = dmm::kind_stats(servers().postgres, name);
    REQUIRE(stats.size() == 1);
    return stats[0].due_by_priority;
  };
  // No worker runs: every notified matter stays due.
  bucket.notify(Job{.id = "h", .fail_times = 1, .retry_after_ms = 2000}, {.priority = dmm::Priority::high});
  bucket.notify_many(std::vector<Job>{{.id = "n1"}, {.id = "n2"}});
  bucket.notify(Job{.id = "l"}, {.priority = dmm::Priority::low});
  CHECK(due() == std::map<std::string, std::int64_t>{{"high", 1}, {"normal", 2}, {"low", 1}});
  {
    // h fails once and is due again 2 s later (RetryAfter); the workers stop
    // before that, once the others converged.
    Runner runner(bucket);
    wait_until([&] { return count_converged(name, "job") == 3 && query_phase(name, "job", "h") == "retrying"; }, 15s,
               "n1, n2 and l to converge and h to fail once");
  }
  REQUIRE(query_phase(name, "job", "h") == "retrying");
  // Due again, the retry runs at low, though h was notified high.
  wait_until([&] { return !due().empty(); }, 10s, "h's retry to be due");
  CHECK(due() == std::map<std::string, std::int64_t>{{"low", 1}});
}

TEST_CASE("a priority outside dmm::Priority is refused, naming the kind, with nothing stored", "[priority][bad-input]") {
  auto name = unique_name("prio-bad");
  auto bucket = open_bucket(name);
  bucket.register_kind<Job>("job", fast_kind());
  const dmm::NotifyOptions bad{.priority = static_cast<dmm::Priority>(7)};
  CHECK_THROWS_WITH(bucket.notify(Job{.id = "x"}, bad),
                    Catch::Contains("kind 'job'") && Catch::Contains("NotifyOptions::priority is 7"));
  CHECK_THROWS_AS(bucket.notify_many(std::vector<Job>{{.id = "y"}}, bad), dmm::InvalidArgument);
  {
    pqxx::work txn(pg());
    CHECK_THROWS_AS(bucket.notify(txn, Job{.id = "z"}, bad), dmm::InvalidArgument);
  }
  CHECK(count_matters(name) == 0);
}
