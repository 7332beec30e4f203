// Steps: a materializer written as an ordered list of named steps, with
// progress recorded in PostgreSQL, a retry count and backoff per step, and
// rollback (gazebo's actions, cueball's steps; Temporal's "a completed step
// is never repeated"). docs/DESIGN.md, "Steps", has the reasons.
//
//   struct Rollout {
//     std::string id, version, old_version;
//     dmm::StepProgress progress{};  // a field of the matter, stored with it
//     ...
//     dmm::Result materialize(dmm::Context& ctx) {
//       return dmm::Steps(ctx, *this, progress)
//           .step("write-config", [&] { ... })
//           .step("start-new", [&] { ... }, {.rollback = [&] { ... }, .max_attempts = 5})
//           .step("health-check", [&] { ... }, {.backoff = dmm::Backoff{.initial = 1s}})
//           .step("stop-old", [&] { ... })
//           .run();
//     }
//   };
//
// The contract:
// - Progress is durable. A step's completion is stored (Context::checkpoint,
//   with the whole matter, so the fields a step set are stored too, for
//   later steps and their rollbacks to read) before the next step starts.
//   After a crash the action resumes at the first step that did not
//   complete; a completed step never runs again for the same generation. The
//   step that was running when the process died runs again, so each step
//   must be idempotent, as materialize() is.
// - A new goal. A notify of a different state while the action runs takes
//   effect at the next step boundary: the action returns, and runs again
//   with the new state. For a new generation the list starts over, except
//   steps marked `keep_on_new_goal` that were done.
// - Per-step retry. A step that throws is retried with its own backoff (by
//   default the kind's) and its own attempt count; the steps before it do not
//   run again. With `max_attempts` N, its Nth failure fails it for good.
// - Rollback. A step that fails for good (its attempts used up, or a
//   TerminalError) has the rollback handlers of the completed steps run in
//   reverse order. Each is retried until it succeeds (backoff as its step's)
//   or throws a TerminalError (then it is "rollback failed" and the others
//   still run). Then the matter is `failed` with the step's error and the
//   progress says "rolled back". Bucket::retry (which gives the matter a new
//   generation) or a new state starts over; an attempt that finds its own
//   generation rolled back (the failure was not written back: a crash) fails
//   again and runs nothing.
// - A stop. A step that throws after its stop token was requested (the
//   process stops, or cannot renew its lease) is not a failed attempt of the
//   step: it runs again in the next attempt.
// - Hooks. before() runs before the first step and after() after the last,
//   once per action, recorded as steps named "before" and "after".
// - Removal. finalize() sees the stored progress; Steps::undo() runs the
//   rollback handlers of the completed steps (as above) from finalize.
// - Bad input is a TerminalError naming the matter and the step, and the
//   stored state is kept: two steps of one name, an empty list, a stored
//   progress that names a step the code no longer has.
#pragma once

#include <chrono>
#include <cstdint>
#include <ctime>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "dmm/context.hpp"
#include "dmm/errors.hpp"
#include "dmm/options.hpp"
#include "dmm/result.hpp"

namespace dmm {

// One step as stored. status: pending, running, done, failed (for good),
// retrying (failed, will run again), rolled back, rollback failed.
struct StepRecord {
  std::string name{};
  std::string status = "pending";
  int attempts = 0;           // failed attempts of the step
  int rollback_attempts = 0;  // failed attempts of its rollback
  std::string last_error{};
  std::string at{};  // when the status last changed (UTC, ISO 8601)
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(StepRecord, name, status, attempts, rollback_attempts, last_error, at)

// The progress of an action, a field of the matter. `format` marks it for
// dmmctl describe and the web view, which show each step.
struct StepProgress {
  std::string format = "dmm.steps/1";
  std::int64_t generation = 0;  // the generation (goal) the action works toward
  // pending, running, done, rolling back, rolled back
  std::string phase = "pending";
  std::string error{};  // why the action is rolling back or rolled back
  std::vector<StepRecord> steps{};
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(StepProgress, format, generation, phase, error, steps)

struct StepOptions {
  // Undoes the step; run, newest step first, when a later step fails for
  // good. Default: none (nothing to undo).
  std::function<void()> rollback{};
  // Failures after which the step fails for good. Default 0: retry forever.
  int max_attempts = 0;
  // The step's own retry schedule, by its own attempt count. Default: the
  // kind's (KindOptions::backoff, by the matter's failed attempts).
  std::optional<Backoff> backoff{};
  // A done step stays done when a new state (generation) arrives; default:
  // the list starts over.
  bool keep_on_new_goal = false;
};

template <class T>
class Steps {
 public:
  Steps(Context& ctx, T& self, StepProgress& progress) : ctx_(ctx), self_(self), progress_(progress) {}

  Steps& before(std::function<void()> hook) {
    before_ = std::move(hook);
    return *this;
  }
  Steps& after(std::function<void()> hook) {
    after_ = std::move(hook);
    return *this;
  }
  Steps& step(std::string name, std::function<void()> run, StepOptions options = {}) {
    steps_.push_back({std::move(name), std::move(run), std::move(options)});
    return *this;
  }

  // Runs the action from where its progress stands (see the contract above).
  Result run() {
    auto list = validated();
    start(list);
    if (progress_.phase == "done") return Result::done();
    if (progress_.phase == "rolling back") return roll_back(list, progress_.error, true);
    // Rolled back, and the failure was not written back (a crash, a lost
    // lease): fail again, running nothing (Bucket::retry gives the matter a
    // new generation, which starts over).
    if (progress_.phase == "rolled back") throw TerminalError(progress_.error + "; rolled back");
    if (progress_.phase != "running") {
      progress_.phase = "running";
      if (!save()) return Result::done();
    }
    for (std::size_t i = 0; i < list.size(); ++i) {
      auto& record = progress_.steps[i];
      if (record.status == "done") continue;
      if (ctx_.stop_requested()) throw Error(about(list[i]) + ": stopping before it starts");
      record.status = "running";
      stamp(record);
      if (!save()) return Result::done();  // a new goal: it takes effect now
      try {
        list[i].run();
      } catch (const TerminalError& e) {
        fail(record, e.what());
        ctx_.count_step("failed");
        return roll_back(list, about(list[i]) + " failed: " + e.what(), false);
      } catch (const std::exception& e) {
        // Asked to stop (the process stops, or the lease could not be
        // renewed): not a failure of the step; the engine releases the
        // matter without counting an attempt, and the step runs again.
        if (ctx_.stop_requested()) throw;
        ++record.attempts;
        const auto& o = list[i].options;
        const auto what = fmt_failures(list[i], record, e.what());
        if (o.max_attempts > 0 && record.attempts >= o.max_attempts) {
          fail(record, e.what());
          ctx_.count_step("failed");
          return roll_back(list, what + "; gave up (StepOptions::max_attempts)", false);
        }
        record.status = "retrying";
        record.last_error = e.what();
        stamp(record);
        save();
        ctx_.count_step("retried");
        retry(list[i], record.attempts, what, dynamic_cast<const RetryAfter*>(&e));
      }
      record.status = "done";
      record.last_error.clear();
      stamp(record);
      ctx_.count_step("done");
      if (!save()) return Result::done();
    }
    progress_.phase = "done";
    save();
    return Result::done();
  }

  // From finalize(): runs the rollback handlers of the completed steps,
  // newest first, as a failed action would; returns once all have run.
  void undo() {
    auto list = validated();
    if (progress_.steps.empty()) return;  // never started: nothing to undo
    align(list);
    if (progress_.phase != "rolled back") {
      if (progress_.phase != "rolling back") {
        progress_.phase = "rolling back";
        progress_.error = "the matter is being removed";
        save();
      }
      undo_steps(list);
      progress_.phase = "rolled back";
      save();
    }
  }

 private:
  struct Entry {
    std::string name;
    std::function<void()> run;
    StepOptions options;
  };

  std::string about(const Entry& e) const { return "step '" + e.name + "'"; }
  std::string matter() const { return "kind '" + ctx_.kind() + "' identity '" + ctx_.identity().substr(0, 64) + "'"; }

  // The list with the hooks as steps, checked (bad input: TerminalError).
  std::vector<Entry> validated() const {
    if (steps_.empty())
      throw TerminalError(matter() + ": dmm::Steps has no steps; give the action at least one step()");
    std::vector<Entry> list;
    if (before_) list.push_back({"before", before_, {}});
    for (const auto& s : steps_) list.push_back(s);
    if (after_) list.push_back({"after", after_, {}});
    std::set<std::string> names;
    for (const auto& e : list) {
      if (e.name.empty()) throw TerminalError(matter() + ": a step has an empty name; name every step");
      if (!names.insert(e.name).second)
        throw TerminalError(matter() + ": two steps are named '" + e.name +
                            "' (\"before\" and \"after\" name the hooks); give each step its own name");
    }
    return list;
  }

  // Makes progress_ describe this generation's action, in the list's order.
  void start(const std::vector<Entry>& list) {
    const bool new_goal = progress_.generation != ctx_.generation();
    if (!new_goal) {
      for (const auto& r : progress_.steps) {
        const bool known = std::any_of(list.begin(), list.end(), [&](const Entry& e) { return e.name == r.name; });
        if (!known)
          throw TerminalError(matter() + ": stored progress names step '" + r.name +
                              "', which this action no longer has (its steps changed); notify a new state to start "
                              "the action over (the stored state was kept)");
      }
      align(list);
      return;
    }
    std::vector<StepRecord> kept;
    for (const auto& e : list) {
      StepRecord fresh{.name = e.name};
      if (new_goal && e.options.keep_on_new_goal)
        for (const auto& r : progress_.steps)
          if (r.name == e.name && r.status == "done") fresh = r;
      kept.push_back(std::move(fresh));
    }
    progress_.steps = std::move(kept);
    progress_.generation = ctx_.generation();
    progress_.phase = "pending";
    progress_.error.clear();
  }

  void align(const std::vector<Entry>& list) {
    std::vector<StepRecord> aligned;
    for (const auto& e : list) {
      StepRecord r{.name = e.name};
      for (const auto& old : progress_.steps)
        if (old.name == e.name) r = old;
      aligned.push_back(std::move(r));
    }
    progress_.steps = std::move(aligned);
  }

  // Stores the matter with its progress; false if a newer state won.
  bool save() { return ctx_.checkpoint(self_); }

  static void stamp(StepRecord& r) {
    const auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
    std::tm tm{};
    gmtime_r(&now, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    r.at = buf;
  }

  void fail(StepRecord& r, const std::string& error) {
    r.status = "failed";
    r.last_error = error;
    stamp(r);
  }

  std::string fmt_failures(const Entry& e, const StepRecord& r, const std::string& error) const {
    return about(e) + " failed " + std::to_string(r.attempts) + (r.attempts == 1 ? " time" : " times") +
           " (last error: " + error + ")";
  }

  // Ends this attempt so that the step runs again: after the step's own
  // backoff, the delay its error named, or the kind's backoff.
  [[noreturn]] void retry(const Entry& e, int attempts, const std::string& what, const RetryAfter* named) {
    if (named) throw RetryAfter(named->delay(), what);
    if (e.options.backoff) throw RetryAfter(step_delay(*e.options.backoff, attempts), what);
    throw Error(what);
  }

  static std::chrono::milliseconds step_delay(const Backoff& b, int attempt) {
    double delay = static_cast<double>(b.initial.count());
    for (int i = 1; i < attempt; ++i) delay *= b.multiplier;
    delay = std::min(delay, static_cast<double>(b.max.count()));
    static thread_local std::mt19937 rng{std::random_device{}()};
    std::uniform_real_distribution<double> spread(1 - b.jitter, 1 + b.jitter);
    delay = std::min(delay * spread(rng), static_cast<double>(b.max.count()));
    return std::chrono::milliseconds(std::max<std::int64_t>(1, static_cast<std::int64_t>(delay)));
  }

  // Rolls back after `error`; then the matter fails with it.
  Result roll_back(const std::vector<Entry>& list, const std::string& error, bool resumed) {
    if (!resumed) {
      progress_.phase = "rolling back";
      progress_.error = error;
      if (!save()) return Result::done();
    }
    undo_steps(list);
    progress_.phase = "rolled back";
    save();
    throw TerminalError(error + "; rolled back");
  }

  // Runs the rollback of every done step, newest first; a failure ends the
  // attempt (retried), a TerminalError marks the step "rollback failed".
  void undo_steps(const std::vector<Entry>& list) {
    for (std::size_t n = list.size(); n-- > 0;) {
      auto& record = progress_.steps[n];
      if (record.status != "done") continue;
      const auto& e = list[n];
      if (!e.options.rollback) continue;
      try {
        e.options.rollback();
        record.status = "rolled back";
        record.last_error.clear();
        ctx_.count_step("rolled_back");
      } catch (const TerminalError& err) {
        record.status = "rollback failed";
        record.last_error = err.what();
        ctx_.count_step("rollback_failed");
      } catch (const std::exception& err) {
        ++record.rollback_attempts;
        record.last_error = err.what();
        stamp(record);
        save();
        retry(e, record.rollback_attempts,
              "rolling back (" + progress_.error + "): rollback of " + about(e) + " failed " +
                  std::to_string(record.rollback_attempts) + " time(s) (last error: " + err.what() + ")",
              dynamic_cast<const RetryAfter*>(&err));
      }
      stamp(record);
      save();
    }
  }

  Context& ctx_;
  T& self_;
  StepProgress& progress_;
  std::function<void()> before_, after_;
  std::vector<Entry> steps_;
};

}  // namespace dmm
