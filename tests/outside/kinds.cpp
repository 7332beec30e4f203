// The options each check registers its kind with.
#include "kinds.hpp"

#include <stdexcept>

namespace flow_check {

void register_kind(dmm::Bucket& bucket, const std::string& check) {
  dmm::KindOptions o;
  o.concurrency = 4;  // per process: more than kSlots over all
  if (check == "global_concurrency") {
    o.batch = 16;
    o.prefetch = 32;
    o.global_concurrency = kSlots;
    bucket.register_kind<Slotted>("call", o);
  } else if (check == "rate_limit") {
    o.batch = 16;
    o.prefetch = 32;
    o.rate_limit = kRate;
    bucket.register_kind<Paced>("paced", o);
  } else if (check == "priority") {
    o.batch = 32;
    o.prefetch = kPrefetch;
    bucket.register_kind<Job>("job", o);
  } else if (check == "retry_cap") {
    o.max_attempts = kMaxAttempts;
    o.backoff = {.initial = 20ms, .max = 200ms, .multiplier = 2.0, .jitter = 0.2};
    bucket.register_kind<Doomed>("doomed", o);
  } else if (check == "fairness") {
    o.batch = kOrderBatch;
    o.prefetch = kOrderPrefetch;
    bucket.register_kind<Order>("order", o);
    o.batch = kTaskBatch;
    o.prefetch = kTaskPrefetch;
    o.fairness_key = [](const nlohmann::json& state) { return state.at("owner").get<std::string>(); };
    bucket.register_kind<Task>("task", o);
  } else if (check == "partition") {
    o.concurrency = kHeld;
    o.lease_ttl = kHeldLease;
    bucket.register_kind<Held>("held", o);
  } else {
    throw std::invalid_argument("unknown check '" + check + "'");
  }
}

}  // namespace flow_check
