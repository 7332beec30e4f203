// WorkStream: the worker loop of one kind in this process.
//
// work() fetches tokens from the kind's durable JetStream consumer (shared by
// every process, so adding processes adds throughput), claims the matters in
// PostgreSQL in one batched statement (a lease with an owner and expiry),
// runs up to KindOptions::concurrency materializations at once, and writes the
// outcomes back in batches, fenced by the lease. A sweeper in the same loop
// re-sends tokens for matters whose work is due (retries, requeues, tokens
// that were lost), so work owed is never forgotten while PostgreSQL holds it.
//
// work() returns after stop(): fetching stops at once, in-flight
// materializations get KindOptions::stop_grace to finish (their stop token is
// requested), and every lease still held is released, so no other worker has
// to wait for one to expire.
#pragma once

#include <memory>
#include <string>

namespace dmm {

namespace detail {
class WorkStreamEngine;
}

class WorkStream {
 public:
  explicit WorkStream(std::unique_ptr<detail::WorkStreamEngine> engine);
  ~WorkStream();
  WorkStream(const WorkStream&) = delete;
  WorkStream& operator=(const WorkStream&) = delete;

  // Runs this kind's workers and sweeper on the calling thread (plus helper
  // threads) until stop(). Throws dmm::Error only if it cannot start at all;
  // lost connections later are logged and retried.
  void work();
  // Asks work() to finish as described above. Safe from any thread and from
  // a signal-watching thread; returns at once.
  void stop();

  const std::string& kind() const;

 private:
  std::unique_ptr<detail::WorkStreamEngine> engine_;
};

}  // namespace dmm
