// The `steps` scenario's action, its run log and its checker (see
// steps_scenario.hpp).
#include "steps_scenario.hpp"

#include <algorithm>
#include <cstdio>
#include <functional>
#include <iostream>
#include <set>
#include <thread>

namespace fault_steps {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr int kMaxAttempts = 3;  // of steps 3 and 4; the others retry forever
constexpr int kShown = 5;        // examples printed per kind of violation

std::string step_name(int i) { return "step-" + std::to_string(i); }

// pqxx connections are not thread-safe: one per executor thread, reopened
// after PostgreSQL restarts.
pqxx::connection& connection(const std::string& url) {
  thread_local std::unique_ptr<pqxx::connection> conn;
  if (!conn || !conn->is_open()) conn = std::make_unique<pqxx::connection>(url);
  return *conn;
}

// Runs `fn` on this thread's connection; after an error (PostgreSQL
// restarting) again every 100 ms, until it succeeds, `give_up()` holds or
// 60 s pass (then it throws). Each statement commits on its own.
void durably(const std::string& url, const std::function<bool()>& give_up,
             const std::function<void(pqxx::connection&)>& fn) {
  const auto deadline = Clock::now() + 60s;
  for (;;) {
    try {
      fn(connection(url));
      return;
    } catch (const std::exception&) {
      try {
        connection(url).disconnect();
      } catch (const std::exception&) {
      }
      if (give_up() || Clock::now() > deadline) throw;
      std::this_thread::sleep_for(100ms);
    }
  }
}

// What one attempt of an action writes: its run (dmm_test.runs, as Probe's,
// for the suite's lost and overlap checks) and its events (dmm_test.step_log).
class Recorder {
 public:
  Recorder(const Env& env, dmm::Context& ctx, const Action& action) : env_(env), ctx_(ctx), action_(action) {}

  // The run's id first, so that a start whose INSERT committed just before
  // the connection broke can still be closed.
  void run_started() {
    durably(env_.postgres, stopping(), [&](pqxx::connection& c) {
      pqxx::nontransaction tx(c);
      if (run_id_ == 0)
        run_id_ = tx.exec1(
                        "SELECT nextval(pg_get_serial_sequence('dmm_test.runs', "
                        "'run_id'))")[0]
                      .as<long>();
      tx.exec_params(
          "INSERT INTO dmm_test.runs (run_id, bucket, identity, "
          "worker, seq, started) "
          "VALUES ($1, $2, $3, $4, $5, clock_timestamp()) ON "
          "CONFLICT (run_id) DO NOTHING",
          run_id_, env_.bucket, action_.id, env_.worker, action_.seq);
    });
  }

  // The end is the wall clock when the work ended (as Probe's), written even
  // while stopping: a run left open would count as lasting to the end.
  void run_finished(const std::string& outcome) {
    if (run_id_ == 0) return;
    const auto ended =
        std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count();
    durably(
        env_.postgres, [] { return false; },
        [&](pqxx::connection& c) {
          pqxx::nontransaction tx(c);
          tx.exec_params(
              "UPDATE dmm_test.runs SET finished = to_timestamp($3::double "
              "precision / 1e6), outcome = $2 "
              "WHERE run_id = $1",
              run_id_, outcome, std::to_string(ended));
        });
  }

  // One row of the run log, committed when it returns. With `snapshot`, the
  // row carries the step statuses stored for this action's generation at that
  // moment: the checker's proof of what PostgreSQL held as completed.
  void event(const std::string& what, int step, bool snapshot) {
    durably(env_.postgres, stopping(), [&](pqxx::connection& c) {
      pqxx::nontransaction tx(c);
      tx.exec_params(std::string(R"sql(
INSERT INTO dmm_test.step_log (bucket, identity, seq, generation, worker, step, event, stored)
SELECT $1::text, $2::text, $3::bigint, $4::bigint, $5::text, $6::integer, $7::text, )sql") +
                         (snapshot ? R"sql((
  SELECT array_agg(s->>'status' ORDER BY n) FROM dmm.matter m,
         jsonb_array_elements(m.state->'progress'->'steps') WITH ORDINALITY AS t(s, n)
   WHERE m.bucket = $1::text AND m.kind = $8::text AND m.identity = $2::text
     AND (m.state->'progress'->>'generation')::bigint = $4::bigint))sql"
                                   : "NULL WHERE $8::text <> ''"),
                     env_.bucket, action_.id, action_.seq, ctx_.generation(), env_.worker, step, what,
                     std::string(kKind));
    });
  }

 private:
  std::function<bool()> stopping() const {
    return [this] { return ctx_.stop_requested(); };
  }

  const Env& env_;
  dmm::Context& ctx_;
  const Action& action_;
  long run_id_ = 0;
};

std::uint64_t fnv1a(const std::string& s) {
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

bool fails_for_good(const std::string& plan) { return plan == "terminal" || plan == "exhausted"; }

}  // namespace

Action action_of(const std::string& id, long seq) {
  const auto h = fnv1a(id + ":" + std::to_string(seq));
  Action a{.id = id, .seq = seq};
  const auto pick = h % 100;
  if (pick < 8) {
    a.plan = "terminal";
    a.fail_step = 2 + static_cast<int>((h >> 8) % 4);
  } else if (pick < 16) {
    a.plan = "exhausted";
    a.fail_step = 3 + static_cast<int>((h >> 8) % 2);
  } else if (pick < 28) {
    a.plan = "transient";
    a.fail_step = 3 + static_cast<int>((h >> 8) % 2);
  }
  if (fails_for_good(a.plan) && (h >> 16) % 2)
    a.undo_fail_step = 1 + static_cast<int>((h >> 20) % static_cast<std::uint64_t>(a.fail_step - 1));
  return a;
}

dmm::Result Action::materialize(dmm::Context& ctx) {
  const auto& env = ctx.service<Env>();
  Recorder rec(env, ctx, *this);
  try {
    rec.run_started();
  } catch (const std::exception&) {
    rec.run_finished("unrecorded");  // a no-op unless the INSERT committed after all
    throw;
  }
  // Best effort: the statuses stored when the attempt began and ended.
  auto snapshot = [&](const char* what) {
    try {
      rec.event(what, 0, true);
    } catch (const std::exception&) {
    }
  };
  snapshot("attempt");
  auto body = [&rec, &env, this](int i) {
    rec.event("start", i, true);
    std::this_thread::sleep_for(env.work);
    const int failed_before = progress.steps.at(static_cast<std::size_t>(i - 1)).attempts;
    const bool fail =
        fail_step == i && (fails_for_good(plan) || (plan == "transient" && failed_before < kMaxAttempts - 1));
    if (!fail) return rec.event("end", i, false);
    rec.event("fail", i, false);
    const auto why =
        "action " + id + " seq " + std::to_string(seq) + ": " + step_name(i) + " fails by design (" + plan + ")";
    if (plan == "terminal") throw dmm::TerminalError(why);
    throw std::runtime_error(why);
  };
  auto undo = [&rec, this](int i) {
    rec.event("undo", i, true);
    if (undo_fail_step == i && progress.steps.at(static_cast<std::size_t>(i - 1)).rollback_attempts < 1) {
      rec.event("undo-fail", i, false);
      throw std::runtime_error("action " + id + ": the rollback of " + step_name(i) + " fails once by design");
    }
    rec.event("undone", i, false);
  };
  dmm::Steps steps(ctx, *this, progress);
  for (int i = 1; i <= kSteps; ++i)
    steps.step(step_name(i), [&body, i] { body(i); },
               {.rollback = [&undo, i] { undo(i); },
                .max_attempts = i == 3 || i == 4 ? kMaxAttempts : 0,
                .backoff = dmm::Backoff{.initial = 20ms, .max = 200ms}});
  try {
    auto result = steps.run();
    snapshot("finish");
    rec.run_finished(progress.phase == "done" ? "done" : "superseded");
    return result;
  } catch (const dmm::TerminalError&) {
    snapshot("finish");
    rec.run_finished(progress.phase == "rolled back" ? "rolled back" : "terminal");
    throw;
  } catch (const std::exception&) {
    snapshot("finish");
    rec.run_finished(ctx.stop_requested() ? "stopped" : "failed");
    throw;
  }
}

void ensure_tables(pqxx::connection& conn) {
  dmm_test::ensure_runs_table(conn);
  pqxx::work tx(conn);
  tx.exec("SELECT pg_advisory_xact_lock(727276)");
  // stored: the step statuses PostgreSQL held for the action's generation
  // when the row was written (NULL if not asked for, or none of it stored).
  tx.exec(R"sql(
CREATE TABLE IF NOT EXISTS dmm_test.step_log (
  log_id bigserial PRIMARY KEY, bucket text NOT NULL, identity text NOT NULL, seq bigint NOT NULL,
  generation bigint NOT NULL, worker text NOT NULL, step integer NOT NULL, event text NOT NULL,
  stored text[], at timestamptz NOT NULL DEFAULT clock_timestamp()))sql");
  tx.exec(
      "CREATE INDEX IF NOT EXISTS step_log_action ON dmm_test.step_log "
      "(bucket, identity, generation, log_id)");
  tx.commit();
}

void register_kind(dmm::Bucket& bucket) { bucket.register_kind<Action>(kKind); }

void notify_many(dmm::Bucket& bucket, const std::vector<dmm_test::Probe>& states) {
  std::vector<Action> actions;
  actions.reserve(states.size());
  for (const auto& s : states) actions.push_back(action_of(s.id, s.seq));
  bucket.notify_many(actions);
}

void notify(dmm::Bucket& bucket, const dmm_test::Probe& state) { bucket.notify(action_of(state.id, state.seq)); }

namespace {

// Violations of one kind, with the first few shown.
struct Findings {
  std::string what;
  long count = 0;
  std::vector<std::string> examples{};

  void add(const std::string& example) {
    if (count++ < kShown) examples.push_back(example);
  }
  void print() const {
    if (count == 0) return;
    std::cerr << "  steps: " << count << " " << what << ":\n";
    for (const auto& e : examples) std::cerr << "    " << e << "\n";
  }
};

// Why the stored action `a` (phase, generation, last_error) and the steps its
// final generation ended and undid (`log`, "end 1,end 2,undone 1") do not
// match its plan; empty if they do.
std::string outcome_mismatch(const Action& a, const std::string& phase, long generation, const std::string& last_error,
                             const std::string& log) {
  const auto& p = a.progress;
  if (p.generation != generation)
    return "progress is of generation " + std::to_string(p.generation) + ", the matter of " +
           std::to_string(generation);
  if (p.steps.size() != static_cast<std::size_t>(kSteps)) return std::to_string(p.steps.size()) + " steps stored";
  std::set<int> ended;
  std::vector<int> undone;
  for (std::size_t at = 0; at < log.size();) {
    auto comma = log.find(',', at);
    if (comma == std::string::npos) comma = log.size();
    const auto item = log.substr(at, comma - at);
    const int step = std::stoi(item.substr(item.find(' ') + 1));
    if (item.rfind("end ", 0) == 0) ended.insert(step);
    if (item.rfind("undone ", 0) == 0 && (undone.empty() || undone.back() != step)) undone.push_back(step);
    at = comma + 1;
  }
  const int k = a.fail_step;
  if (!fails_for_good(a.plan)) {
    if (phase != "ready" || p.phase != "done")
      return "is " + phase + " with progress " + p.phase + ", not ready and done";
    for (int i = 1; i <= kSteps; ++i) {
      if (p.steps[i - 1].status != "done") return step_name(i) + " is " + p.steps[i - 1].status + ", not done";
      if (!ended.count(i)) return step_name(i) + " is done, but the run log has no end of it";
    }
    if (!undone.empty()) return "a rollback ran";
    if (a.plan == "transient" && p.steps[k - 1].attempts != kMaxAttempts - 1)
      return step_name(k) + " counts " + std::to_string(p.steps[k - 1].attempts) + " failed attempts, not " +
             std::to_string(kMaxAttempts - 1);
    return "";
  }
  if (phase != "failed" || p.phase != "rolled back")
    return "is " + phase + " with progress " + p.phase + ", not failed and rolled back";
  for (int i = 1; i <= kSteps; ++i) {
    const auto want = i < k ? "rolled back" : i == k ? "failed" : "pending";
    if (p.steps[i - 1].status != want) return step_name(i) + " is " + p.steps[i - 1].status + ", not " + want;
    if (i < k && !ended.count(i)) return step_name(i) + " was rolled back, but the run log has no end of it";
    if (i >= k && ended.count(i)) return step_name(i) + " ended, after or at the step that failed";
  }
  std::vector<int> newest_first;
  for (int i = k - 1; i >= 1; --i) newest_first.push_back(i);
  if (undone != newest_first) {
    std::string got;
    for (int i : undone) got += (got.empty() ? "" : ",") + std::to_string(i);
    return "rollbacks completed in the order [" + got + "], not newest first";
  }
  if (a.plan == "exhausted" && p.steps[k - 1].attempts != kMaxAttempts)
    return step_name(k) + " counts " + std::to_string(p.steps[k - 1].attempts) + " failed attempts, not " +
           std::to_string(kMaxAttempts);
  if (a.undo_fail_step && p.steps[a.undo_fail_step - 1].rollback_attempts != 1)
    return "the rollback of " + step_name(a.undo_fail_step) + " counts " +
           std::to_string(p.steps[a.undo_fail_step - 1].rollback_attempts) + " failed attempts, not 1";
  if (last_error.find("step '" + step_name(k) + "'") == std::string::npos)
    return "its last error does not name " + step_name(k) + ": " + last_error.substr(0, 200);
  return "";
}

}  // namespace

long check(pqxx::transaction_base& tx, const std::string& bucket, const std::map<std::string, long>& expected) {
  // A step that started after the log showed it completed for its generation:
  // stored as done (or failed, or rolled back) in an earlier row, or a later
  // step had started, or the rollback had begun.
  Findings rerun{"runs of a step already completed for its generation"};
  for (const auto& r : tx.exec_params(R"sql(
SELECT r.identity, r.generation, r.step, r.worker, e.event, e.step, e.worker, array_to_string(e.stored, ',')
  FROM dmm_test.step_log r
  CROSS JOIN LATERAL (
    SELECT * FROM dmm_test.step_log e
     WHERE e.bucket = r.bucket AND e.identity = r.identity AND e.generation = r.generation AND e.log_id <= r.log_id
       AND (e.stored[r.step] IN ('done', 'failed', 'rolled back', 'rollback failed')
            OR (e.event = 'start' AND e.step > r.step) OR e.event = 'undo')
     ORDER BY e.log_id LIMIT 1) e
 WHERE r.bucket = $1 AND r.event = 'start')sql",
                                      bucket))
    rerun.add(std::string(r[0].c_str()) + " generation " + r[1].c_str() + ": step " + r[2].c_str() + " ran on " +
              r[3].c_str() + " after " + r[4].c_str() + " " + r[5].c_str() + " on " + r[6].c_str() +
              " (stored then: " + r[7].c_str() + ")");
  // A rollback that started for a step not stored as done (when its
  // generation's progress was stored at all), after its own rollback was
  // stored as completed, or after an older step's had begun.
  Findings unrolled{
      "rollbacks out of order, of a step not done, or run again "
      "after completing"};
  for (const auto& r : tx.exec_params(R"sql(
SELECT r.identity, r.generation, r.step, r.worker, array_to_string(r.stored, ','), e.event, e.step
  FROM dmm_test.step_log r
  LEFT JOIN LATERAL (
    SELECT * FROM dmm_test.step_log e
     WHERE e.bucket = r.bucket AND e.identity = r.identity AND e.generation = r.generation AND e.log_id <= r.log_id
       AND (e.stored[r.step] IN ('rolled back', 'rollback failed') OR (e.event = 'undo' AND e.step < r.step))
     ORDER BY e.log_id LIMIT 1) e ON true
 WHERE r.bucket = $1 AND r.event = 'undo' AND (e.log_id IS NOT NULL OR r.stored[r.step] <> 'done'))sql",
                                      bucket))
    unrolled.add(std::string(r[0].c_str()) + " generation " + r[1].c_str() + ": rollback of step " + r[2].c_str() +
                 " on " + r[3].c_str() + " (stored then: " + r[4].c_str() + ")" +
                 (r[5].is_null() ? "" : std::string(" after ") + r[5].c_str() + " " + r[6].c_str()));
  // Each action ended as its plan says, its run log agreeing.
  Findings wrong{"actions that did not end as their injected failures say"};
  std::map<std::string, long> plans;
  for (const auto& r : tx.exec_params(R"sql(
SELECT m.identity, m.phase, m.generation, m.state::text, coalesce(m.last_error, ''),
       coalesce((SELECT string_agg(l.event || ' ' || l.step, ',' ORDER BY l.log_id) FROM dmm_test.step_log l
                  WHERE l.bucket = m.bucket AND l.identity = m.identity AND l.generation = m.generation
                    AND l.event IN ('end', 'undone')), '')
  FROM dmm.matter m WHERE m.bucket = $1 AND m.kind = $2)sql",
                                      bucket, std::string(kKind))) {
    const auto a = nlohmann::json::parse(r[3].c_str()).get<Action>();
    const auto it = expected.find(a.id);
    if (it == expected.end() || it->second != a.seq) continue;  // lost: counted by the caller
    ++plans[a.plan];
    const auto why = outcome_mismatch(a, r[1].c_str(), r[2].as<long>(), r[4].c_str(), r[5].c_str());
    if (!why.empty())
      wrong.add(a.id + " (seq " + std::to_string(a.seq) + ", " + a.plan +
                (a.fail_step ? " at " + step_name(a.fail_step) : "") +
                (a.undo_fail_step ? ", rollback of " + step_name(a.undo_fail_step) + " fails once" : "") + "): " + why);
  }
  const auto figures = tx.exec_params1(R"sql(
SELECT count(*) FILTER (WHERE event = 'start'),
       count(*) FILTER (WHERE event = 'start') - count(DISTINCT (identity, generation, step)) FILTER (WHERE event = 'start'),
       count(*) FILTER (WHERE event = 'undo'),
       count(DISTINCT (identity, generation)) FILTER (WHERE event = 'undo'),
       count(*) FILTER (WHERE event = 'attempt' AND 'running' = ANY (stored))
  FROM dmm_test.step_log WHERE bucket = $1)sql",
                                       bucket);
  const long starts = figures[0].as<long>(), again = figures[1].as<long>(), resumed = figures[4].as<long>();
  // An attempt that found a step stored as running resumed an action a fault
  // interrupted mid-step; without one, the faults proved nothing here.
  Findings untested{"scenarios in which no fault interrupted a step"};
  if (resumed == 0)
    untested.add(
        "no attempt found a step stored as running: the faults missed "
        "every step");
  std::printf(
      "  steps: %ld step runs (%ld again: interrupted, or failed and "
      "retried), %ld attempts resumed a step a fault "
      "interrupted, %ld rollbacks in %ld actions; final plans: %ld "
      "clean, %ld transient, %ld terminal, %ld "
      "exhausted; re-runs of completed steps %ld, rollbacks out of "
      "order or again %ld, wrong outcomes %ld\n",
      starts, again, resumed, figures[2].as<long>(), figures[3].as<long>(), plans["clean"], plans["transient"],
      plans["terminal"], plans["exhausted"], rerun.count, unrolled.count, wrong.count);
  for (const auto* f : {&rerun, &unrolled, &wrong, &untested}) f->print();
  return rerun.count + unrolled.count + wrong.count + untested.count;
}

}  // namespace fault_steps
