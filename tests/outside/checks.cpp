// The checks: notify a bucket of their own from here, run worker processes of
// this program on it, and judge what the workers recorded (flow_check.run)
// and what dmm's public views (dmm/inspect.hpp) show.
#include "checks.hpp"

#include <algorithm>
#include <functional>
#include <iostream>
#include <map>
#include <random>

#include "kinds.hpp"
#include "workers.hpp"

namespace flow_check {

void Report::check(bool ok, const std::string& line) {
  std::cout << (ok ? "ok: " : "FAILED: ") << line << std::endl;
  if (!ok) ++failures_;
}

std::string unique_bucket(const std::string& prefix) {
  static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
  std::random_device rd;
  std::string name = "outside-" + prefix + "-";
  for (int i = 0; i < 10; ++i) name += alphabet[rd() % (sizeof alphabet - 1)];
  return name;
}

dmm::Bucket open_bucket(const Servers& s, const std::string& name, const std::string& check) {
  auto bucket = dmm::Bucket::open({.name = name, .postgres = s.postgres, .nats = s.nats});
  register_kind(bucket, check);
  return bucket;
}

std::string wait_for(Workers& workers, milliseconds limit, const std::function<bool()>& done) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (auto ended = workers.ended(); !ended.empty()) return ended;
    if (std::chrono::steady_clock::now() >= deadline) return "timed out after " + std::to_string(limit.count()) + " ms";
    std::this_thread::sleep_for(20ms);
  }
  return "";
}

std::int64_t scalar(pqxx::connection& pg, const std::string& sql, const std::string& bucket) {
  pqxx::nontransaction tx(pg);
  return tx.exec_params1(sql, bucket)[0].as<std::int64_t>(0);
}

namespace {

// Runs per worker process, most first ("55/54/41"), and how many processes ran.
std::string runs_per_worker(pqxx::connection& pg, const std::string& bucket, int* workers) {
  pqxx::nontransaction tx(pg);
  const auto rows =
      tx.exec_params("SELECT count(*) FROM flow_check.run WHERE bucket = $1 GROUP BY worker ORDER BY 1 DESC", bucket);
  std::string out;
  for (const auto& r : rows) out += (out.empty() ? "" : "/") + r[0].as<std::string>();
  *workers = static_cast<int>(rows.size());
  return out;
}

// Deletes what a check left in dmm.matter (the backlog it did not drain).
void tidy(const Servers& s, const std::string& bucket) {
  dmm::remove_matters({.postgres = s.postgres, .bucket = bucket}, /*skip_finalize=*/true);
}

// One urgent notify: how it is sent, and the run ids around it.
struct Urgent {
  std::string path;  // notify, notify_many, notify(txn)
  std::vector<std::string> ids;
  // The last run id committed when the notify returned. A backlog run that
  // took its id before but committed after counts as started after it: the
  // check errs towards failing.
  std::int64_t returned_after = 0;
};

}  // namespace

void check_global_concurrency(const Servers& s, Report& report) {
  const auto name = unique_bucket("slots");
  auto bucket = open_bucket(s, name, "global_concurrency");
  std::vector<Slotted> calls;
  for (int i = 0; i < kSlotCalls; ++i) calls.push_back({.id = "call-" + std::to_string(i)});
  bucket.notify_many(calls);

  pqxx::connection pg(s.postgres);
  Workers workers("global_concurrency", name, kSlotWorkers);
  const auto waited = wait_for(workers, 40s, [&] {
    return scalar(pg, "SELECT count(DISTINCT identity) FROM flow_check.run WHERE bucket = $1 AND ended_at IS NOT NULL",
                  name) >= kSlotCalls;
  });
  const auto stopped = workers.stop(20s);
  const auto ended = scalar(pg, "SELECT count(*) FROM flow_check.run WHERE bucket = $1 AND ended_at IS NOT NULL", name);
  const std::string what = "global_concurrency " + std::to_string(kSlots) + ": ";
  if (!waited.empty()) {
    report.check(false, what + "only " + std::to_string(ended) + " of " + std::to_string(kSlotCalls) +
                            " calls ran: " + waited + (stopped.empty() ? "" : "; " + stopped));
    return;
  }
  report.check(stopped.empty(), what + "workers stopped cleanly on SIGTERM" + (stopped.empty() ? "" : ": " + stopped));

  // Runs at once: +1 at each start, -1 at each end, in time order (an end
  // before a start at the same instant).
  const auto most = scalar(pg, R"sql(
SELECT coalesce(max(n), 0) FROM (
  SELECT sum(d) OVER (ORDER BY at, d) AS n FROM (
    SELECT started_at AS at, 1 AS d FROM flow_check.run WHERE bucket = $1
    UNION ALL
    SELECT ended_at, -1 FROM flow_check.run WHERE bucket = $1 AND ended_at IS NOT NULL) e) s)sql",
                           name);
  int processes = 0;
  const auto per_worker = runs_per_worker(pg, name, &processes);
  const std::string figures = std::to_string(most) + " of " + std::to_string(ended) + " runs at once at most, in " +
                              std::to_string(processes) + " processes (runs each: " + per_worker + ")";
  report.check(most <= kSlots, what + "never more than " + std::to_string(kSlots) + " at once: " + figures);
  // Each process runs 4 at most, so N at once were runs of several processes.
  report.check(most == kSlots && processes > 1,
               what + "all " + std::to_string(kSlots) + " slots used, by several processes: " + figures);

  const auto stats = dmm::kind_stats(s.postgres, name);
  const bool one = stats.size() == 1;
  report.check(one && stats[0].slots == kSlots && stats[0].slots_in_use == 0,
               what + "no slot held after the workers stopped: dmm::kind_stats shows " +
                   (one ? dmm::slots_text(stats[0]) : std::to_string(stats.size()) + " kinds") + " (in use/slots)");
}

void check_rate_limit(const Servers& s, Report& report) {
  const auto name = unique_bucket("rate");
  auto bucket = open_bucket(s, name, "rate_limit");
  std::vector<Paced> calls;
  for (int i = 0; i < 1000; ++i) calls.push_back({.id = "paced-" + std::to_string(i)});
  bucket.notify_many(calls);

  pqxx::connection pg(s.postgres);
  Workers workers("rate_limit", name, kRateWorkers);
  const auto span_sql =
      "SELECT coalesce((extract(epoch FROM max(leased_at) - min(leased_at)) * 1000)::bigint, 0) "
      "FROM flow_check.run WHERE bucket = $1";
  const auto waited = wait_for(workers, 30s, [&] { return milliseconds(scalar(pg, span_sql, name)) >= kRateSpan; });
  const auto stopped = workers.stop(20s);
  tidy(s, name);
  const std::string limit = std::to_string(kRate.count) + " per " + std::to_string(kRate.per.count()) + " ms, burst " +
                            std::to_string(kRate.burst);
  const std::string what = "rate_limit " + limit + ": ";
  const auto starts = scalar(pg, "SELECT count(*) FROM flow_check.run WHERE bucket = $1", name);
  const auto span_ms = scalar(pg, span_sql, name);
  if (!waited.empty()) {
    report.check(false, what + std::to_string(starts) + " starts in " + std::to_string(span_ms) + " ms: " + waited);
    return;
  }
  report.check(stopped.empty(), what + "workers stopped cleanly on SIGTERM" + (stopped.empty() ? "" : ": " + stopped));

  const auto unleased = scalar(pg, "SELECT count(*) FROM flow_check.run WHERE bucket = $1 AND leased_at IS NULL", name);
  report.check(unleased == 0, what + std::to_string(unleased) + " of " + std::to_string(starts) +
                                  " runs saw no lease of their own in dmm::inspect");
  // The most starts in a window [t, t + per) opened at any start.
  const auto window_sql = [](const char* column) {
    return std::string("SELECT coalesce(max((SELECT count(*) FROM flow_check.run b WHERE b.bucket = a.bucket AND b.") +
           column + " >= a." + column + " AND b." + column + " < a." + column +
           " + $2 * interval '1 millisecond')), 0) FROM flow_check.run a WHERE a.bucket = $1 AND a." + column +
           " IS NOT NULL";
  };
  const auto most_in_window = [&](const char* column) {
    pqxx::nontransaction tx(pg);
    return tx.exec_params1(window_sql(column), name, kRate.per.count())[0].as<std::int64_t>();
  };
  const auto most_leased = most_in_window("leased_at");
  const auto most_run = most_in_window("started_at");
  int processes = 0;
  const auto per_worker = runs_per_worker(pg, name, &processes);
  report.check(most_leased <= kRate.count + kRate.burst,
               what + "at most " + std::to_string(most_leased) + " starts (counted at their lease) in any " +
                   std::to_string(kRate.per.count()) +
                   " ms, within count + burst = " + std::to_string(kRate.count + kRate.burst) + ", in " +
                   std::to_string(processes) + " processes (starts each: " + per_worker +
                   "; by the runs' own start times, a moment after their lease: " + std::to_string(most_run) + ")");
  // Used: at least 80% of count per `per` over the span watched.
  const double expected =
      static_cast<double>(kRate.count) * static_cast<double>(span_ms) / static_cast<double>(kRate.per.count());
  report.check(static_cast<double>(starts) >= 0.8 * expected,
               what + "the rate is used: " + std::to_string(starts) + " starts in " + std::to_string(span_ms) +
                   " ms, at least 80% of the " + std::to_string(static_cast<long>(expected)) + " the count allows");
}

void check_priority(const Servers& s, Report& report) {
  const auto name = unique_bucket("prio");
  auto bucket = open_bucket(s, name, "priority");
  std::vector<Job> backlog;
  backlog.reserve(kBacklog);
  for (int i = 0; i < kBacklog; ++i) backlog.push_back({.id = "bulk-" + std::to_string(i), .work_us = 2000});
  bucket.notify_many(backlog);

  pqxx::connection pg(s.postgres);
  const auto last_run = [&] {
    return scalar(pg, "SELECT coalesce(max(id), 0) FROM flow_check.run WHERE bucket = $1", name);
  };
  const auto started = [&](const std::string& id) {
    pqxx::nontransaction tx(pg);
    return !tx.exec_params("SELECT 1 FROM flow_check.run WHERE bucket = $1 AND identity = $2", name, id).empty();
  };
  const dmm::NotifyOptions high{.priority = dmm::Priority::high};
  std::vector<Urgent> urgents;
  std::string waited;
  {
    Workers workers("priority", name, kJobWorkers);
    waited = wait_for(workers, 40s,
                      [&] { return scalar(pg, "SELECT count(*) FROM flow_check.run WHERE bucket = $1", name) > 1000; });
    const std::vector<std::pair<std::string, std::function<std::vector<std::string>()>>> paths{
        {"notify",
         [&] {
           bucket.notify(Job{.id = "urgent-1"}, high);
           return std::vector<std::string>{"urgent-1"};
         }},
        {"notify_many",
         [&] {
           bucket.notify_many(std::vector<Job>{{.id = "urgent-2a"}, {.id = "urgent-2b"}}, high);
           return std::vector<std::string>{"urgent-2a", "urgent-2b"};
         }},
        {"notify(txn)", [&] {
           pqxx::connection conn(s.postgres);
           pqxx::work txn(conn);
           bucket.notify(txn, Job{.id = "urgent-3"}, high);
           txn.commit();
           return std::vector<std::string>{"urgent-3"};
         }}};
    for (const auto& [path, notify] : paths) {
      if (!waited.empty()) break;
      Urgent u{.path = path, .ids = notify()};
      u.returned_after = last_run();
      waited = wait_for(workers, 30s, [&] {
        for (const auto& id : u.ids)
          if (!started(id)) return false;
        return true;
      });
      if (!waited.empty()) waited = path + ": " + waited;
      urgents.push_back(std::move(u));
    }
    const auto stopped = workers.stop(20s);  // every run recorded is committed now
    report.check(stopped.empty(),
                 "priority: workers stopped cleanly on SIGTERM" + (stopped.empty() ? "" : ": " + stopped));
  }
  tidy(s, name);
  const std::int64_t bound = static_cast<std::int64_t>(kPrefetch) * kJobWorkers;
  if (!waited.empty()) {
    report.check(false, "priority: " + waited + " (backlog starts so far: " +
                            std::to_string(scalar(pg, "SELECT count(*) FROM flow_check.run WHERE bucket = $1", name)) +
                            ")");
    return;
  }
  pqxx::nontransaction tx(pg);
  for (const auto& u : urgents) {
    for (const auto& id : u.ids) {
      // Backlog runs started before the urgent one, and of those, after its notify returned.
      const auto row = tx.exec_params1(
          "SELECT count(*) FILTER (WHERE b.id > $3), count(*) FROM flow_check.run b, "
          "(SELECT id FROM flow_check.run WHERE bucket = $1 AND identity = $2) u "
          "WHERE b.bucket = $1 AND b.identity LIKE 'bulk-%' AND b.id < u.id",
          name, id, u.returned_after);
      const auto after = row[0].as<std::int64_t>(), before = row[1].as<std::int64_t>();
      // A backlog that had (nearly) drained would prove nothing.
      const bool worked = before < kBacklog - 2 * bound;
      report.check(worked && after <= bound,
                   "priority: " + id + " (high, through " + u.path + ") started after " + std::to_string(after) +
                       " of the normal backlog's starts since its notify returned, within prefetch " +
                       std::to_string(kPrefetch) + " x " + std::to_string(kJobWorkers) + " processes = " +
                       std::to_string(bound) + "; " + std::to_string(before) + " of " + std::to_string(kBacklog) +
                       " had started" + (worked ? "" : ", too many: the backlog was nearly drained"));
    }
  }
}

void check_retry_cap(const Servers& s, Report& report) {
  const auto name = unique_bucket("cap");
  auto bucket = open_bucket(s, name, "retry_cap");
  std::vector<Doomed> doomed;
  for (int i = 0; i < kDoomed; ++i) doomed.push_back({.id = "doomed-" + std::to_string(i)});
  bucket.notify_many(doomed);

  const std::string kind = "doomed";
  const dmm::InspectQuery failed{.postgres = s.postgres, .bucket = name, .kind = kind, .phase = "failed"};
  pqxx::connection pg(s.postgres);
  Workers workers("retry_cap", name, kDoomedWorkers);
  auto waited = wait_for(workers, 40s, [&] { return dmm::count_matters(failed) == kDoomed; });
  // A call after giving up would come within the backoff (at most 200 ms):
  // watch for one a while longer. This waits for nothing; it only looks.
  if (waited.empty()) std::this_thread::sleep_for(1s);
  const auto stopped = workers.stop(20s);
  const std::string what = "retry_cap max_attempts " + std::to_string(kMaxAttempts) + ": ";
  if (!waited.empty()) {
    report.check(false, what + std::to_string(dmm::count_matters(failed)) + " of " + std::to_string(kDoomed) +
                            " always-failing matters failed: " + waited);
    return;
  }
  report.check(stopped.empty(), what + "workers stopped cleanly on SIGTERM" + (stopped.empty() ? "" : ": " + stopped));

  const std::string gave_up = "gave up after " + std::to_string(kMaxAttempts) + " attempts";
  std::map<std::string, std::int64_t> calls;
  {
    pqxx::nontransaction tx(pg);
    for (const auto& r :
         tx.exec_params("SELECT identity, count(*) FROM flow_check.run WHERE bucket = $1 GROUP BY 1", name))
      calls[r[0].as<std::string>()] = r[1].as<std::int64_t>();
  }
  std::string expected_outcomes = "failed";
  for (int i = 1; i < kMaxAttempts; ++i) expected_outcomes += ", retry";
  // Per finding: the figures of every matter, and whether all were as expected.
  std::string call_counts, errors, histories;
  bool calls_ok = true, errors_ok = true, histories_ok = true;
  for (const auto& d : doomed) {
    call_counts += (call_counts.empty() ? "" : ", ") + d.id + ": " + std::to_string(calls[d.id]);
    calls_ok = calls_ok && calls[d.id] == kMaxAttempts;
    const auto detail = dmm::describe(s.postgres, name, kind, d.id);
    if (!detail) {
      errors_ok = histories_ok = false;
      errors += (errors.empty() ? "" : "; ") + d.id + " is gone from dmm::describe";
      continue;
    }
    const auto& m = detail->status;
    const std::string last = "last error: " + d.id + " refused call " + std::to_string(kMaxAttempts);
    const bool error_ok = m.phase == "failed" && m.last_error.rfind(gave_up, 0) == 0 &&
                          m.last_error.size() >= last.size() &&
                          m.last_error.compare(m.last_error.size() - last.size(), last.size(), last) == 0;
    errors_ok = errors_ok && error_ok;
    // One example, or each matter that is not as expected.
    if (errors.empty() || !error_ok)
      errors += (errors.empty() ? "" : "; ") + d.id + " " + m.phase + ": \"" + m.last_error + "\"";
    std::string outcomes;
    for (const auto& a : detail->history) outcomes += (outcomes.empty() ? "" : ", ") + a.outcome;
    const bool history_ok = outcomes == expected_outcomes && detail->why.rfind("failed: " + gave_up, 0) == 0;
    histories_ok = histories_ok && history_ok;
    if (histories.empty() || !history_ok)
      histories += (histories.empty() ? "" : "; ") + d.id + ": " + outcomes + "; why: \"" + detail->why + "\"";
  }
  const std::string n = std::to_string(kDoomed);
  report.check(calls_ok, what + "each of " + n + " always-failing matters was called exactly " +
                             std::to_string(kMaxAttempts) + " times (" + call_counts + ")");
  report.check(errors_ok, what + "each is failed, its last_error starting \"" + gave_up +
                              "\" and naming its last error (" + errors + ")");
  report.check(histories_ok, what + "each history (newest first) is " + expected_outcomes +
                                 ", and why says it gave up (" + histories + ")");
  const auto stats = dmm::kind_stats(s.postgres, name);
  const auto counted = stats.size() == 1 ? stats[0].gave_up : -1;
  report.check(counted == kDoomed,
               what + "dmm::kind_stats counts " + std::to_string(counted) + " of " + n + " as gave up");
}

namespace {

std::int64_t starts(pqxx::connection& pg, const std::string& bucket) {
  return scalar(pg, "SELECT count(*) FROM flow_check.run WHERE bucket = $1", bucket);
}

// A small shop's orders, notified after a large shop's backlog: their tokens
// are behind all of the backlog's in the stream.
void check_fair_backlog(const Servers& s, Report& report) {
  const auto name = unique_bucket("fair");
  auto bucket = open_bucket(s, name, "fairness");
  std::vector<Order> big, small;
  big.reserve(kBigOrders);
  for (int i = 0; i < kBigOrders; ++i) big.push_back({.id = "big-" + std::to_string(i), .shop = "big", .work_us = 500});
  for (int i = 0; i < kSmallOrders; ++i)
    small.push_back({.id = "small-" + std::to_string(i), .shop = "small", .work_us = 500});
  bucket.notify_many(big);
  bucket.notify_many(small);

  pqxx::connection pg(s.postgres);
  const auto small_started = [&] {
    return scalar(
        pg, "SELECT count(DISTINCT identity) FROM flow_check.run WHERE bucket = $1 AND identity LIKE 'small-%'", name);
  };
  Workers workers("fairness", name, kFairWorkers);
  const auto waited = wait_for(workers, 40s, [&] { return small_started() >= kSmallOrders; });
  const auto stopped = workers.stop(20s);
  tidy(s, name);
  const std::string what = "fairness (tenant(), " + std::to_string(kBigOrders) + " orders of a large shop, then " +
                           std::to_string(kSmallOrders) + " of a small one): ";
  const auto total = starts(pg, name);
  if (!waited.empty()) {
    report.check(false, what + std::to_string(small_started()) + " of the small shop's orders started in " +
                            std::to_string(total) + " starts: " + waited);
    return;
  }
  report.check(stopped.empty(), what + "workers stopped cleanly on SIGTERM" + (stopped.empty() ? "" : ": " + stopped));

  // The number (1-based) of each small order's first start among all starts.
  pqxx::nontransaction tx(pg);
  const auto rows = tx.exec_params(
      "SELECT min(n) FROM (SELECT identity, row_number() OVER (ORDER BY id) AS n "
      "FROM flow_check.run WHERE bucket = $1) r WHERE identity LIKE 'small-%' GROUP BY identity ORDER BY 1",
      name);
  const std::int64_t bound = static_cast<std::int64_t>(kFairWorkers) * kOrderPrefetch + kOrderBatch;
  std::int64_t last = 0;
  std::string numbers;
  for (const auto& r : rows) {
    last = std::max(last, r[0].as<std::int64_t>());
    numbers += (numbers.empty() ? "" : ", ") + r[0].as<std::string>();
  }
  report.check(static_cast<int>(rows.size()) == kSmallOrders && last <= bound,
               what + "the small shop's orders started as numbers " + numbers + " of " + std::to_string(total) +
                   " starts, within processes " + std::to_string(kFairWorkers) + " x prefetch " +
                   std::to_string(kOrderPrefetch) + " + batch " + std::to_string(kOrderBatch) + " = " +
                   std::to_string(bound));
}

// More owners than a claim takes, notified owner by owner: token order alone
// would serve them one after another.
void check_fair_rotation(const Servers& s, Report& report) {
  const auto name = unique_bucket("rota");
  auto bucket = open_bucket(s, name, "fairness");
  std::vector<Task> tasks;
  for (int k = 0; k < kOwners; ++k) {
    const std::string owner = (k < 10 ? "o0" : "o") + std::to_string(k);
    for (int i = 0; i < kTasksEach; ++i)
      tasks.push_back({.id = owner + "-" + std::to_string(i), .owner = owner, .work_us = 500});
  }
  bucket.notify_many(tasks);

  pqxx::connection pg(s.postgres);
  // The owner of a run is its identity up to the '-'.
  const auto owners_started = [&] {
    return scalar(pg, "SELECT count(DISTINCT split_part(identity, '-', 1)) FROM flow_check.run WHERE bucket = $1",
                  name);
  };
  Workers workers("fairness", name, kRotationWorkers);
  const auto waited = wait_for(workers, 30s, [&] { return owners_started() >= kOwners; });
  const auto stopped = workers.stop(20s);
  tidy(s, name);
  const std::string what = "fairness (fairness_key, " + std::to_string(kOwners) + " owners x " +
                           std::to_string(kTasksEach) + " tasks, batch " + std::to_string(kTaskBatch) + "): ";
  if (!waited.empty()) {
    report.check(false, what + std::to_string(owners_started()) + " owners started in " +
                            std::to_string(starts(pg, name)) + " starts: " + waited);
    return;
  }
  report.check(stopped.empty(), what + "workers stopped cleanly on SIGTERM" + (stopped.empty() ? "" : ": " + stopped));

  // The start after which every owner had started, and the most starts of
  // one owner up to it.
  pqxx::nontransaction tx(pg);
  const auto row = tx.exec_params1(R"sql(
WITH r AS (
  SELECT row_number() OVER (ORDER BY id) AS n, split_part(identity, '-', 1) AS owner
  FROM flow_check.run WHERE bucket = $1),
f AS (SELECT owner, min(n) AS first FROM r GROUP BY owner),
a AS (SELECT max(first) AS all_by FROM f)
SELECT (SELECT count(*) FROM f), a.all_by,
       (SELECT coalesce(max(c), 0) FROM (SELECT count(*) AS c FROM r WHERE n <= a.all_by GROUP BY owner) m)
FROM a)sql",
                                   name);
  const auto owners = row[0].as<std::int64_t>(), all_by = row[1].as<std::int64_t>(), most = row[2].as<std::int64_t>();
  const std::int64_t bound = 2 * kOwners;
  report.check(owners == kOwners && all_by <= bound,
               what + "every owner had started after " + std::to_string(all_by) + " starts, within 2 x " +
                   std::to_string(kOwners) + " owners = " + std::to_string(bound) + ", in " +
                   std::to_string(kRotationWorkers) + " process (the most starts of one owner by then: " +
                   std::to_string(most) + ")");
}

}  // namespace

void check_fairness(const Servers& s, Report& report) {
  check_fair_backlog(s, report);
  check_fair_rotation(s, report);
}

}  // namespace flow_check
