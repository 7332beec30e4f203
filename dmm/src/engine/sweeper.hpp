// The sweeper of one kind: sends tokens for matters whose kick (dmm.kick)
// came due (notifies whose token got lost, retries and requeues coming due, leases
// that expired with their holder), so work owed is never forgotten while
// PostgreSQL holds it. Several processes may sweep the same kind: rows are
// taken with SKIP LOCKED and re-armed, so each token goes out about once.
#pragma once

#include <stop_token>
#include <string>

#include "engine/deps.hpp"

namespace dmm::detail {

class Sweeper {
 public:
  Sweeper(const EngineDeps& deps, std::string kind) : deps_(deps), kind_(std::move(kind)) {}
  // Sweeps until `stop`; sleeps until the next kick (at most 1 s) or until
  // woken by a NOTIFY on the wake channel (transactional notifies).
  void run(std::stop_token stop);

 private:
  const EngineDeps& deps_;
  const std::string kind_;
};

}  // namespace dmm::detail
