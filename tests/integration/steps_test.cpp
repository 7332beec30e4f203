// dmm::Steps (dmm/steps.hpp, docs/DESIGN.md "Steps") on real servers:
// progress survives a SIGKILL and no completed step runs again, a failing
// step retries alone, rollback runs newest first and retries, a new state
// takes effect at a step boundary, removal lets finalize undo the action, and
// bad step lists are refused with the stored state kept.
#include <catch2/catch.hpp>

#include <condition_variable>
#include <httplib.h>
#include <set>

#include "dmm/inspect.hpp"
#include "dmm/steps.hpp"
#include "harness.hpp"
#include "steps_probe.hpp"

using namespace dmm_test;

namespace {

// What the actions of a test did, in order ("<id>:<what>@<generation>"),
// and the failures planned for them.
struct Calls {
  std::mutex mu;
  std::vector<std::string> log; // guarded by mu
  std::map<std::string, int>
      fail_left; // guarded by mu: what -> failures still to throw
  Gate gate;     // a step that waits for the test

  void add(const std::string &entry) {
    std::lock_guard lock(mu);
    log.push_back(entry);
  }
  bool take_failure(const std::string &what) {
    std::lock_guard lock(mu);
    auto it = fail_left.find(what);
    if (it == fail_left.end() || it->second == 0)
      return false;
    if (it->second > 0)
      --it->second; // -1: always
    return true;
  }
  std::vector<std::string> snapshot() {
    std::lock_guard lock(mu);
    return log;
  }
  long count(const std::string &entry) {
    auto all = snapshot();
    return std::count(all.begin(), all.end(), entry);
  }
};

// An action whose steps follow `plan`.
struct Act {
  std::string id;
  int seq = 0;
  std::string plan;
  dmm::StepProgress progress{};

  std::string identity() const { return id; }

  dmm::Steps<Act> steps(dmm::Context &ctx) {
    auto &calls = ctx.service<Calls>();
    const auto gen = ctx.generation();
    auto run = [&calls, gen, this](const std::string &what) {
      return [&calls, gen, this, what] {
        calls.add(id + ":" + what + "@" + std::to_string(gen));
        if (what == "b" && plan == "gate" && !calls.gate.wait({}))
          throw std::runtime_error("gate never opened");
        if (calls.take_failure(what))
          throw std::runtime_error(what + " failed on purpose");
      };
    };
    dmm::Steps<Act> s(ctx, *this, progress);
    if (plan == "retry") {
      s.step("a", run("a"))
          .step("b", run("b"),
                {.backoff = dmm::Backoff{.initial = 20ms, .max = 100ms}});
      s.step("c", run("c"));
    } else if (plan == "slow-retry") {
      s.step("a", run("a"))
          .step("b", run("b"), {.backoff = dmm::Backoff{.initial = 10min, .max = 10min}})
          .step("c", run("c"));
    } else if (plan == "rollback") {
      s.step("a", run("a"), {.rollback = run("undo-a")});
      s.step("b", run("b"),
             {.rollback = run("undo-b"),
              .backoff = dmm::Backoff{.initial = 20ms, .max = 100ms}});
      s.step("c", run("c"),
             {.max_attempts = 2,
              .backoff = dmm::Backoff{.initial = 20ms, .max = 100ms}});
    } else if (plan == "gate") {
      s.before(run("before")).after(run("after"));
      s.step("a", run("a"), {.rollback = run("undo-a")})
          .step("b", run("b"))
          .step("c", run("c"));
    } else if (plan == "duplicate") {
      s.step("a", run("a")).step("a", run("a"));
    } else if (plan == "known") {
      s.step("a", run("a")).step("b", run("b"));
    }
    return s;
  }
  dmm::Result materialize(dmm::Context &ctx) { return steps(ctx).run(); }
  void finalize(dmm::Context &ctx) {
    ctx.service<Calls>().add(
        id + ":finalize saw " + progress.phase + " " +
        (progress.steps.empty() ? "-" : progress.steps.front().status));
    steps(ctx).undo();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Act, id, seq, plan, progress)

struct Fixture {
  std::string name = unique_name("steps");
  std::shared_ptr<Calls> calls = std::make_shared<Calls>();
  dmm::Bucket bucket = open_bucket(name);

  Fixture() {
    bucket.provide(calls);
    bucket.register_kind<Act>("act", fast_kind(2));
  }
  dmm::StepProgress progress(const std::string &id) {
    auto m = query_matter(name, "act", id);
    REQUIRE(m);
    return m->state.at("progress").get<dmm::StepProgress>();
  }
  std::function<std::string()> describe() {
    return [this] { return describe_unconverged(name); };
  }
};

std::string status_of(const dmm::StepProgress &p, const std::string &step) {
  for (const auto &s : p.steps)
    if (s.name == step)
      return s.status;
  return "(none)";
}

} // namespace

TEST_CASE("after SIGKILLs an action resumes at the first step not done, and no "
          "completed step runs again",
          "[steps]") {
  constexpr int kActions = 30;
  const auto name = unique_name("steps-kill");
  {
    pqxx::connection conn(servers().postgres);
    ensure_step_runs_table(conn);
  }
  auto bucket = open_bucket(name);
  bucket.register_kind<StepsProbe>("steps", fast_kind());
  std::vector<StepsProbe> actions;
  for (int i = 0; i < kActions; ++i)
    actions.push_back({.id = "action-" + std::to_string(i), .seq = 1});
  bucket.notify_many(actions);

  const auto runs = [&] {
    pqxx::nontransaction tx(pg());
    return tx
        .exec1("SELECT count(*) FROM dmm_test.step_runs WHERE bucket = " +
               tx.quote(name))[0]
        .as<long>();
  };
  const WorkerArgs args{.bucket = name,
                        .worker_id = "",
                        .lease_ms = 1500,
                        .sleep_ms = 60,
                        .type = "steps"};
  int kills = 0;
  for (long at : {20L, 60L, 100L}) {
    auto worker = start_worker(args);
    wait_until([&] { return runs() >= at; }, 30s,
               "steps to run before kill " + std::to_string(kills + 1));
    worker->kill(SIGKILL);
    worker->wait(5s);
    ++kills;
  }
  auto worker = start_worker(args);
  wait_until([&] { return count_converged(name, "steps") == kActions; }, 90s,
             "every action to finish",
             [&] { return describe_unconverged(name); });

  long went_back = 0, again = 0, complete = 0;
  {
    pqxx::nontransaction tx(pg());
    const auto q = tx.quote(name);
    // In start order, an action's step numbers never go down: once step n
    // started, every step before it was stored as done and never ran again.
    went_back =
        tx.exec1("SELECT count(*) FROM (SELECT step, lag(step) OVER (PARTITION "
                 "BY identity, generation ORDER BY run_id) AS prev "
                 "FROM dmm_test.step_runs WHERE bucket = " +
                 q + ") s WHERE step < prev")[0]
            .as<long>();
    again =
        tx.exec1("SELECT count(*) FROM (SELECT step, lag(step) OVER (PARTITION "
                 "BY identity, generation ORDER BY run_id) AS prev "
                 "FROM dmm_test.step_runs WHERE bucket = " +
                 q + ") s WHERE step = prev")[0]
            .as<long>();
    complete =
        tx.exec1("SELECT count(*) FROM (SELECT identity FROM "
                 "dmm_test.step_runs WHERE bucket = " +
                 q + " GROUP BY identity HAVING count(DISTINCT step) = " +
                 std::to_string(kProbeSteps) + ") s")[0]
            .as<long>();
  }
  INFO(kills << " kills; " << again
             << " steps ran again because they were running at a kill");
  CHECK(went_back == 0);
  CHECK(complete == kActions);
  CHECK(again <=
        kills * 4); // at most the steps in flight at each kill (concurrency 4)
  for (const auto &a : actions) {
    auto m = query_matter(name, "steps", a.id);
    REQUIRE(m);
    const auto p = m->state.at("progress").get<dmm::StepProgress>();
    CHECK(p.phase == "done");
    CHECK(p.steps.size() == static_cast<std::size_t>(kProbeSteps));
  }
}

TEST_CASE("a failing step retries on its own, and the steps before it do not "
          "run again",
          "[steps]") {
  Fixture f;
  f.calls->fail_left["b"] = 2;
  f.bucket.notify(Act{.id = "x", .plan = "retry"});
  Runner runner(f.bucket);
  wait_until([&] { return count_converged(f.name, "act") == 1; }, 20s,
             "the action to finish", f.describe());
  CHECK(f.calls->count("x:a@1") == 1);
  CHECK(f.calls->count("x:b@1") == 3);
  CHECK(f.calls->count("x:c@1") == 1);
  const auto p = f.progress("x");
  CHECK(p.phase == "done");
  REQUIRE(p.steps.size() == 3);
  CHECK(p.steps[1].attempts == 2);
  CHECK(p.steps[1].status == "done");
}

TEST_CASE("why, dmmctl describe and the web view name the step an action "
          "stands at, with its attempts and last error",
          "[steps]") {
  Fixture f;
  f.calls->fail_left["b"] = -1;
  f.bucket.notify(Act{.id = "x", .plan = "slow-retry"});
  Runner runner(f.bucket);
  wait_until([&] { return query_phase(f.name, "act", "x") == "retrying"; }, 20s,
             "step b to fail once", f.describe());
  const auto detail = dmm::describe(servers().postgres, f.name, "act", "x");
  REQUIRE(detail);
  INFO(detail->why);
  CHECK(detail->why.rfind("step 'b' failed 1 time (last error: b failed on purpose); retrying at ", 0) == 0);
  CHECK(detail->why.find("(step 'b' (2 of 3); the steps before it are done") != std::string::npos);

  const auto text = dmm::format_detail(*detail);
  INFO(text);
  CHECK(text.find("steps (progress): running for generation 1") != std::string::npos);
  CHECK(text.find("STEP") != std::string::npos);
  CHECK(text.find("b failed on purpose") != std::string::npos);

  const int port = f.bucket.serve_http("127.0.0.1:0");
  httplib::Client http("127.0.0.1", port);
  const auto page = http.Get("/matter?kind=act&identity=x");
  REQUIRE(page);
  REQUIRE(page->status == 200);
  INFO(page->body);
  CHECK(page->body.find("<h2>Steps <span class=\"muted\">(progress)</span></h2>") != std::string::npos);
  CHECK(page->body.find("<tr><td>a</td><td>done</td><td>0</td>") != std::string::npos);
  CHECK(page->body.find("<tr><td>b</td><td>retrying</td><td>1</td><td>0</td>") != std::string::npos);
  CHECK(page->body.find("<tr><td>c</td><td>pending</td><td>0</td>") != std::string::npos);
  CHECK(page->body.find("step &#39;b&#39; failed 1 time") != std::string::npos);
}

TEST_CASE("a step that fails for good rolls back the completed steps newest "
          "first, retrying a failed rollback",
          "[steps]") {
  Fixture f;
  f.calls->fail_left["c"] = -1;     // always
  f.calls->fail_left["undo-b"] = 1; // the first rollback of b fails
  f.bucket.notify(Act{.id = "x", .plan = "rollback"});
  Runner runner(f.bucket);
  wait_until([&] { return query_phase(f.name, "act", "x") == "failed"; }, 20s,
             "the action to fail", f.describe());
  std::vector<std::string> expected = {"x:a@1",     "x:b@1",      "x:c@1",
                                       "x:c@1",     "x:undo-b@1", "x:undo-b@1",
                                       "x:undo-a@1"};
  CHECK(f.calls->snapshot() == expected);
  const auto m = query_matter(f.name, "act", "x");
  INFO(m->last_error);
  CHECK(m->last_error.find("step 'c' failed 2 times") != std::string::npos);
  CHECK(m->last_error.find("rolled back") != std::string::npos);
  const auto detail = dmm::describe(servers().postgres, f.name, "act", "x");
  REQUIRE(detail);
  CHECK(detail->why.rfind("failed and rolled back: step 'c' failed 2 times", 0) == 0);
  const auto p = f.progress("x");
  CHECK(p.phase == "rolled back");
  CHECK(status_of(p, "a") == "rolled back");
  CHECK(status_of(p, "b") == "rolled back");
  CHECK(status_of(p, "c") == "failed");

  // A retry starts the action over, as generation 2 of the same state.
  f.calls->fail_left["c"] = 0;
  CHECK(f.bucket.retry<Act>("x"));
  wait_until([&] { return count_converged(f.name, "act") == 1; }, 20s,
             "the retried action to finish", f.describe());
  CHECK(f.calls->count("x:a@1") == 1);
  CHECK(f.calls->count("x:a@2") == 1);
  CHECK(f.progress("x").phase == "done");
}

TEST_CASE("a new state during an action takes effect at the next step "
          "boundary, and its list starts over",
          "[steps]") {
  Fixture f;
  f.bucket.notify(Act{.id = "x", .seq = 1, .plan = "gate"});
  Runner runner(f.bucket);
  wait_until([&] { return f.calls->count("x:b@1") == 1; }, 20s,
             "step b to start");
  f.bucket.notify(
      Act{.id = "x", .seq = 2, .plan = "gate"}); // generation 2, while b runs
  f.calls->gate.open();
  wait_until([&] { return count_converged(f.name, "act") == 1; }, 20s,
             "the action to finish", f.describe());
  std::vector<std::string> expected = {"x:before@1", "x:a@1",    "x:b@1",
                                       "x:before@2", "x:a@2",    "x:b@2",
                                       "x:c@2",      "x:after@2"};
  CHECK(f.calls->snapshot() == expected);
  const auto m = query_matter(f.name, "act", "x");
  CHECK(m->state.at("seq") == 2);
  CHECK(f.progress("x").generation == 2);
}

TEST_CASE("removing a matter in the middle of an action lets finalize see the "
          "progress and undo it",
          "[steps]") {
  Fixture f;
  f.bucket.notify(Act{.id = "x", .plan = "gate"});
  Runner runner(f.bucket);
  wait_until([&] { return f.calls->count("x:b@1") == 1; }, 20s,
             "step b to start");
  CHECK(f.bucket.remove<Act>("x"));
  f.calls->gate.open();
  wait_until([&] { return query_phase(f.name, "act", "x") == "(absent)"; }, 20s,
             "the matter to be deleted", f.describe());
  const auto log = f.calls->snapshot();
  INFO(Catch::Detail::stringify(log));
  // b's completion was not stored (the removal was a newer generation), so
  // finalize sees the action running at b, with before and a done.
  CHECK(f.calls->count("x:finalize saw running done") == 1);
  CHECK(f.calls->count("x:undo-a@2") == 1);
  CHECK(f.calls->count("x:c@1") == 0);
}

TEST_CASE("bad step lists and stored progress are refused naming the matter "
          "and the step, state kept",
          "[steps]") {
  Fixture f;
  const auto failed_with = [&](const std::string &id, const std::string &says) {
    wait_until([&] { return query_phase(f.name, "act", id) == "failed"; }, 20s,
               id + " to fail", f.describe());
    const auto m = query_matter(f.name, "act", id);
    INFO(m->last_error);
    CHECK(m->last_error.find("kind 'act' identity '" + id + "'") !=
          std::string::npos);
    CHECK(m->last_error.find(says) != std::string::npos);
    return *m;
  };
  Runner runner(f.bucket);
  f.bucket.notify(Act{.id = "dup", .plan = "duplicate"});
  failed_with("dup", "two steps are named 'a'");
  f.bucket.notify(Act{.id = "empty", .plan = "none"});
  failed_with("empty", "has no steps");

  // A progress stored by code that had a step 'gone' (generation 1: the
  // action is under way).
  dmm::StepProgress old{.generation = 1,
                        .phase = "running",
                        .steps = {{.name = "gone", .status = "done"}}};
  f.bucket.notify(Act{.id = "changed", .plan = "known", .progress = old});
  const auto m = failed_with("changed", "names step 'gone'");
  CHECK(m.state.at("progress").at("steps").at(0).at("name") ==
        "gone"); // kept as it was

  // A progress that does not decode: written straight into the row, as no
  // materializer of this code would, and made due (the sweeper sends its
  // token).
  f.bucket.notify(Act{.id = "garbled", .plan = "known"});
  wait_until([&] { return count_converged(f.name, "act") >= 1; }, 20s,
             "garbled to finish first", f.describe());
  auto bad = nlohmann::json(Act{.id = "garbled", .plan = "known"});
  bad["progress"]["steps"] = "not a list";
  {
    pqxx::nontransaction raw(pg());
    raw.exec_params(
        "UPDATE dmm.matter SET state = $1::jsonb, generation = generation + 1, "
        "due_at = now(), "
        "phase = 'pending' WHERE bucket = $2 AND identity = 'garbled'",
        bad.dump(), f.name);
    raw.exec_params(
        "INSERT INTO dmm.kick (matter_id, bucket, kind, kick_at) SELECT id, "
        "bucket, kind, now() "
        "FROM dmm.matter WHERE bucket = $1 AND identity = 'garbled'",
        f.name);
    raw.exec("SELECT pg_notify('dmm_wake', " + raw.quote(f.name) + ")");
  }
  failed_with("garbled", "does not decode");
  CHECK(query_matter(f.name, "act", "garbled")->state == bad);
}

namespace {

// An action whose step b fails for good; in attempt 1 its TerminalError is
// turned into a crash stand-in (a plain error: the failure is not written
// back), as a SIGKILL or a lost lease between the rollback's checkpoint and
// the write-back would leave it.
struct Crashy {
  std::string id;
  dmm::StepProgress progress{};
  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context &ctx) {
    auto &calls = ctx.service<Calls>();
    dmm::Steps s(ctx, *this, progress);
    s.step("a", [&] { calls.add("a"); }, {.rollback = [&] { calls.add("undo-a"); }});
    s.step("b", [&] {
      calls.add("b");
      throw dmm::TerminalError("b is broken");
    });
    try {
      return s.run();
    } catch (const dmm::TerminalError &) {
      if (ctx.attempt() == 1) throw std::runtime_error("the process died here");
      throw;
    }
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Crashy, id, progress)

// A step b that runs until its stop token is requested, then throws as a
// step honouring it does; it may fail only once (max_attempts 1).
struct Stoppable {
  std::string id;
  dmm::StepProgress progress{};
  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context &ctx) {
    auto &calls = ctx.service<Calls>();
    return dmm::Steps(ctx, *this, progress)
        .step("a", [&] { calls.add("a"); }, {.rollback = [&] { calls.add("undo-a"); }})
        .step("b",
              [&] {
                calls.add("b");
                std::mutex m;
                std::condition_variable_any cv;
                std::unique_lock lock(m);
                cv.wait(lock, ctx.stop_token(), [] { return false; });
                throw std::runtime_error("b was asked to stop");
              },
              {.max_attempts = 1})
        .run();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Stoppable, id, progress)

} // namespace

TEST_CASE("an action that rolled back but whose failure was not written back "
          "fails again without running a step; a retry starts it over",
          "[steps]") {
  const auto name = unique_name("steps");
  auto bucket = open_bucket(name);
  auto calls = std::make_shared<Calls>();
  bucket.provide(calls);
  bucket.register_kind<Crashy>("crashy", fast_kind());
  bucket.notify(Crashy{.id = "x"});
  Runner runner(bucket);
  wait_until([&] { return query_phase(name, "crashy", "x") == "failed"; }, 20s,
             "the action to fail");
  CHECK(calls->snapshot() == std::vector<std::string>{"a", "b", "undo-a"});
  const auto generation = query_matter(name, "crashy", "x")->generation;

  REQUIRE(bucket.retry<Crashy>("x"));
  CHECK(query_matter(name, "crashy", "x")->generation == generation + 1);
  wait_until([&] { return calls->count("undo-a") == 2 &&
                          query_phase(name, "crashy", "x") == "failed"; },
             20s, "the retried action to run and roll back again");
  CHECK(calls->snapshot() ==
        std::vector<std::string>{"a", "b", "undo-a", "a", "b", "undo-a"});
}

TEST_CASE("a step stopped by its stop token does not count a failed attempt",
          "[steps]") {
  const auto name = unique_name("steps");
  auto bucket = open_bucket(name);
  auto calls = std::make_shared<Calls>();
  bucket.provide(calls);
  bucket.register_kind<Stoppable>("stoppable", fast_kind());
  bucket.notify(Stoppable{.id = "x"});
  {
    Runner runner(bucket);
    wait_until([&] { return calls->count("b") == 1; }, 20s, "step b to start");
  } // a graceful stop, as on SIGTERM
  const auto m = query_matter(name, "stoppable", "x");
  REQUIRE(m);
  INFO("phase " << m->phase << ", state " << m->state.dump());
  CHECK(calls->count("undo-a") == 0);
  const auto p = m->state.at("progress").get<dmm::StepProgress>();
  CHECK(p.phase == "running");
  REQUIRE(p.steps.size() == 2);
  CHECK(p.steps[0].status == "done");
  CHECK(p.steps[1].attempts == 0);
  CHECK(m->attempts == 0);
}
