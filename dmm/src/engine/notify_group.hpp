// Concurrent single notifies of one kind, written together (group commit).
//
// Every notify is a statement and a synchronous commit of its own, and a
// token; with many threads notifying at once, PostgreSQL spent more on the
// statements and commits than on the rows (docs/DESIGN.md, "Hot path"). So a
// notify that finds enough writes of its kind in flight queues its matter;
// the next caller to write takes everything queued then, in one statement,
// one commit and tokens for up to 64 matters each, and every caller returns
// once its own matter is committed, as before: what a notify promises (stored
// when it returns) is unchanged. A notify alone waits for nothing.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "dmm/detail/core.hpp"

namespace dmm::detail {

class NotifyGroups {
 public:
  // Writes the matters given (their identities distinct); throws what the
  // write failed with.
  using Write = std::function<void(std::vector<JsonMatter>&)>;

  // Writes of one kind at a time: two, not one, for a higher most notifies/s
  // at the same latency (docs/DESIGN.md, "Hot path").
  static constexpr int kWriters = 2;
  // Matters per statement at most (as notify_many's chunks).
  static constexpr std::size_t kMaxBatch = 2000;

  // Returns when `matter` is written, by this thread or another; rethrows
  // the write's error. When a write of several callers' matters is refused
  // by PostgreSQL (DatabaseError: something in one of them), each is written
  // again on its own, so that only the bad one fails.
  void notify(const std::string& kind, JsonMatter matter, const Write& write);

  // Calls of `kind` queued now, waiting for a writer.
  std::size_t waiting(const std::string& kind);

 private:
  struct Call {
    JsonMatter matter;
    bool done = false;
    std::exception_ptr error;
  };
  struct Queue {
    std::vector<Call*> waiting;
    int writers = 0;
  };

  // Writes `calls` and records each one's outcome; called without mu_.
  static void write_all(std::vector<Call*>& calls, const Write& write);

  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, Queue> queues_;  // guarded by mu_
};

}  // namespace dmm::detail
