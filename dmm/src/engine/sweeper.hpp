// The sweeper of one kind: sends tokens for matters whose kick (dmm.kick)
// came due (notifies whose token got lost, retries and requeues coming due, leases
// that expired with their holder), so work owed is never forgotten while
// PostgreSQL holds it. Several processes may sweep the same kind: rows are
// taken with SKIP LOCKED and re-armed, so each token goes out about once.
#pragma once

#include <chrono>
#include <stop_token>
#include <string>

#include "engine/deps.hpp"

namespace dmm::detail {

class Sweeper {
 public:
  // `resync_every` (KindOptions): when set, the sweeper first schedules the
  // ready matters that have no resync yet.
  Sweeper(const EngineDeps& deps, std::string kind, std::chrono::milliseconds resync_every = {})
      : deps_(deps), kind_(std::move(kind)), resync_every_(resync_every) {}
  // Sweeps until `stop`; sleeps until the next kick (at most 1 s) or until
  // woken by a NOTIFY on the wake channel (transactional notifies).
  void run(std::stop_token stop);

 private:
  // Gives every ready matter without a due time one within a resync period.
  void schedule_resyncs(pqxx::connection& conn, std::stop_token stop);

  const EngineDeps& deps_;
  const std::string kind_;
  const std::chrono::milliseconds resync_every_;
  bool resync_scheduled_ = false;  // sweeper thread only
};

}  // namespace dmm::detail
