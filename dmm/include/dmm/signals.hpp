// Running a bucket until SIGINT or SIGTERM, the way a worker process (or a
// controller embedded in a service) is stopped by its supervisor.
//
//   int main() {
//     dmm::StopSignals signals;            // first: before any thread starts
//     auto bucket = dmm::Bucket::open({...});
//     bucket.register_kind<Player>("player", {});
//     int sig = signals.run(bucket);       // returns once the bucket has stopped
//   }
//
// On the signal, in-flight attempts get KindOptions::stop_grace to finish;
// queued matters are released at once (see Bucket::stop()).
#pragma once

#include <csignal>
#include <functional>

#include "dmm/bucket.hpp"

namespace dmm {

class StopSignals {
 public:
  // Blocks SIGINT and SIGTERM in the calling thread. Threads started later
  // inherit the mask, so only run()'s waiter receives them: construct this
  // on the main thread before anything starts threads (Bucket::open does). A
  // signal that arrives before run() stays pending and stops the bucket as
  // soon as run() starts.
  StopSignals();
  // Restores the calling thread's previous signal mask.
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  // Runs bucket.run() on this thread. On the first SIGINT or SIGTERM, calls
  // `on_signal` (if any) with the signal number, then bucket.stop(). Returns
  // the signal that stopped the bucket, or 0 if run() ended otherwise (a
  // stop() from elsewhere). Rethrows what run() threw. The waiting thread is
  // joined before this returns, so the bucket may be destroyed right after.
  int run(Bucket& bucket, const std::function<void(int)>& on_signal = {});

 private:
  sigset_t set_{};
  sigset_t previous_{};
};

}  // namespace dmm
