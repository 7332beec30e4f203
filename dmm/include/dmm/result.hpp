// Result: what a successful materialization asks for next.
//
// Like controller-runtime's reconcile.Result, with only the two knobs that
// mean something: `done()` (reality matches; wait for the next notify) and
// `requeue_after(d)` (reality matches for now; look again after d, e.g. to
// resync an external system). Errors are exceptions, not results: any
// exception means "retry with backoff", dmm::TerminalError means "give up
// until the state changes".
#pragma once

#include <chrono>
#include <optional>

namespace dmm {

class Result {
 public:
  // The matter is materialized; nothing more is owed until its state changes.
  static Result done() { return Result{}; }

  // The matter is materialized, and must be materialized again after `delay`
  // even if nothing changes. A notify in between still runs it at once.
  static Result requeue_after(std::chrono::milliseconds delay) {
    Result r;
    r.requeue_after_ = delay < std::chrono::milliseconds::zero() ? std::chrono::milliseconds::zero() : delay;
    return r;
  }

  // The requested delay, or nullopt for done().
  std::optional<std::chrono::milliseconds> requeue_after() const { return requeue_after_; }

 private:
  std::optional<std::chrono::milliseconds> requeue_after_;
};

}  // namespace dmm
