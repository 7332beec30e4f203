#include "dmm/signals.hpp"

#include <pthread.h>

#include <atomic>
#include <exception>
#include <thread>

namespace dmm {

StopSignals::StopSignals() {
  sigemptyset(&set_);
  sigaddset(&set_, SIGINT);
  sigaddset(&set_, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set_, &previous_);
}

StopSignals::~StopSignals() { pthread_sigmask(SIG_SETMASK, &previous_, nullptr); }

int StopSignals::run(Bucket& bucket, const std::function<void(int)>& on_signal) {
  std::atomic<bool> finished{false};
  std::atomic<int> received{0};
  std::thread waiter([&] {
    int sig = 0;
    while (sigwait(&set_, &sig) != 0) {
    }
    if (finished.load()) return;  // woken below: run() has ended
    received.store(sig);
    try {
      if (on_signal) on_signal(sig);
    } catch (...) {  // stopping matters more than the callback
    }
    bucket.stop();
  });
  std::exception_ptr failure;
  try {
    bucket.run();
  } catch (...) {
    failure = std::current_exception();
  }
  // Joined on every path: detached, it could still be inside bucket.stop()
  // while the caller destroys the bucket. If no signal came, wake its
  // sigwait with one of its own (directed at it, so nothing else sees it).
  finished.store(true);
  if (received.load() == 0) pthread_kill(waiter.native_handle(), SIGTERM);
  waiter.join();
  if (failure) std::rethrow_exception(failure);
  return received.load();
}

}  // namespace dmm
