// Several worker processes (dmm_test_worker): per-identity exclusion across
// processes, takeover after kill -9, and graceful stop that releases leases.
// Every Probe run is recorded in dmm_test.runs (tests/support/probe.hpp); the
// checks count finished runs only, as a killed run never ends.
#include <catch2/catch.hpp>

#include "harness.hpp"
#include "probe.hpp"

using namespace dmm_test;

namespace {

struct Fixture {
  std::string name;
  dmm::Bucket bucket;
  explicit Fixture(std::string prefix) : name(unique_name(prefix)), bucket(open_bucket(name)) {
    ensure_runs_table(pg());
    // The test only notifies; the workers are other processes.
    bucket.register_kind<Probe>("probe", fast_kind());
  }
  std::string id(int i) const { return name + "-" + std::to_string(i); }
  std::vector<Probe> round(int n, long seq) const {
    std::vector<Probe> out;
    for (int i = 0; i < n; ++i) out.push_back({.id = id(i), .seq = seq});
    return out;
  }
  // Matters ready with the given seq stored and materialized.
  std::int64_t converged_at(long seq) {
    return count_matters(name, "probe",
                         "phase = 'ready' AND materialized_generation = generation AND (state->>'seq')::bigint = " +
                             std::to_string(seq));
  }
  std::function<std::string()> describe() {
    return [n = name] { return describe_unconverged(n); };
  }
  // Pairs of runs of one identity that overlapped in time.
  std::int64_t overlapping_runs() {
    pqxx::nontransaction tx(pg());
    auto r = tx.exec_params(
        "SELECT count(*) FROM dmm_test.runs a JOIN dmm_test.runs b "
        "ON a.identity = b.identity AND a.run_id < b.run_id AND a.started < b.finished AND b.started < a.finished "
        "WHERE a.identity LIKE $1 || '-%'",
        name);
    return r[0][0].as<std::int64_t>();
  }
  // Identities whose last finished run did not see `seq`.
  std::int64_t stale_last_runs(long seq) {
    pqxx::nontransaction tx(pg());
    auto r = tx.exec_params(
        "SELECT count(*) FROM (SELECT DISTINCT ON (identity) identity, seq FROM dmm_test.runs "
        "WHERE identity LIKE $1 || '-%' AND finished IS NOT NULL ORDER BY identity, finished DESC) last "
        "WHERE seq <> $2",
        name, seq);
    return r[0][0].as<std::int64_t>();
  }
  std::int64_t runs_where(const std::string& where) {
    pqxx::nontransaction tx(pg());
    auto r = tx.exec_params(
        "SELECT count(*) FROM dmm_test.runs WHERE identity LIKE $1 || '-%' AND finished IS NOT NULL AND (" + where +
            ")",
        name);
    return r[0][0].as<std::int64_t>();
  }
  std::int64_t live_leases_of(const std::string& worker) {
    return count_matters(name, "probe", "lease_owner = " + pg().quote(worker) +
                                            " AND lease_until > now()");
  }
};

}  // namespace

TEST_CASE("one identity is never materialized by two processes at once", "[process][exclusion]") {
  Fixture f("excl");
  auto a = start_worker({.bucket = f.name, .worker_id = f.name + "-a", .concurrency = 4, .sleep_ms = 20});
  auto b = start_worker({.bucket = f.name, .worker_id = f.name + "-b", .concurrency = 4, .sleep_ms = 20});

  constexpr int kMatters = 100;
  long seq = 0;
  // A notify that throws is a bug in itself (checked below), but keep going so
  // the exclusion checks still run.
  std::vector<std::string> notify_errors;
  const auto until = Clock::now() + 4s;
  while (Clock::now() < until) {
    ++seq;
    try {
      f.bucket.notify_many(f.round(kMatters, seq));
    } catch (const std::exception& e) {
      notify_errors.push_back(e.what());
      --seq;
    }
  }
  INFO("notified " << seq << " rounds of " << kMatters << " matters");
  REQUIRE(seq >= 3);
  INFO(notify_errors.size() << " notify_many calls threw; the first: "
                            << (notify_errors.empty() ? std::string("-") : notify_errors.front()));
  CHECK(notify_errors.empty());

  wait_until([&] { return f.converged_at(seq) == kMatters; }, 60s, "all matters ready with the last seq",
             f.describe());
  CHECK(f.overlapping_runs() == 0);
  CHECK(f.stale_last_runs(seq) == 0);
  CHECK(f.runs_where("true") >= kMatters);
  // Both processes shared the kind's consumer.
  CHECK(f.runs_where("worker = '" + f.name + "-a'") > 0);
  CHECK(f.runs_where("worker = '" + f.name + "-b'") > 0);
}

TEST_CASE("matters held by a killed worker are taken over after the lease expires", "[process]") {
  Fixture f("kill9");
  auto victim = start_worker(
      {.bucket = f.name, .worker_id = f.name + "-victim", .concurrency = 4, .lease_ms = 1500, .sleep_ms = 400});

  constexpr int kMatters = 40;
  f.bucket.notify_many(f.round(kMatters, 1));
  wait_until([&] { return f.live_leases_of(f.name + "-victim") >= 1; }, 10s,
             "the victim to be materializing something", f.describe());
  victim->kill(SIGKILL);
  REQUIRE(victim->wait(10s) == 128 + SIGKILL);
  const std::int64_t orphaned = f.live_leases_of(f.name + "-victim");
  INFO(orphaned << " matters were leased by the victim when it died");

  auto heir = start_worker(
      {.bucket = f.name, .worker_id = f.name + "-heir", .concurrency = 4, .lease_ms = 1500, .sleep_ms = 10});
  wait_until([&] { return f.converged_at(1) == kMatters; }, 30s, "all matters to converge after the kill",
             f.describe());
  CHECK(f.overlapping_runs() == 0);
  CHECK(f.runs_where("worker = '" + f.name + "-heir'") > 0);
  heir->kill(SIGTERM);
  CHECK(heir->wait(10s) == 0);
}

TEST_CASE("a gracefully stopped worker releases its leases", "[process]") {
  Fixture f("graceful");
  // A long lease: if the leases were not released, the next worker could not
  // take the matters over within this test's deadline.
  auto leaving = start_worker({.bucket = f.name,
                               .worker_id = f.name + "-leaving",
                               .concurrency = 4,
                               .lease_ms = 60'000,
                               .sleep_ms = 2000,
                               .stop_grace_ms = 3000});
  constexpr int kMatters = 8;
  f.bucket.notify_many(f.round(kMatters, 1));
  wait_until([&] { return f.live_leases_of(f.name + "-leaving") >= 2; }, 10s,
             "slow materializations to be in flight", f.describe());

  const auto stopped = Clock::now();
  leaving->kill(SIGTERM);
  auto status = leaving->wait(3000ms + 3s);
  REQUIRE(status.has_value());
  CHECK(*status == 0);
  CHECK(Clock::now() - stopped < 3000ms + 3s);
  CHECK(f.live_leases_of(f.name + "-leaving") == 0);

  auto next = start_worker({.bucket = f.name, .worker_id = f.name + "-next", .concurrency = 4, .sleep_ms = 10});
  wait_until([&] { return f.converged_at(1) == kMatters; }, 20s,
             "all matters to converge without waiting for a lease to expire", f.describe());
  CHECK(f.overlapping_runs() == 0);
  next->kill(SIGTERM);
  CHECK(next->wait(10s) == 0);
}
