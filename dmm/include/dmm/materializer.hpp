// The Materializer concept: the one thing a dmm user writes.
//
// A materializer is a value type that is also its own cached state: it is
// stored as JSON in PostgreSQL under (bucket, kind, identity()), and dmm calls
// its materialize(Context&) until it succeeds. The contract, as in
// controller-runtime's reconcile.go:
//
// - Level-based, not event-based. materialize() sees the latest stored state,
//   never a diff or an event. Many notifies may collapse into one call; a
//   call may happen again after success (a lost ack, a requeue). It must be
//   idempotent: make reality match the state, or record reality in the state.
// - Return Result::done() when reality matches, Result::requeue_after(d) to be
//   called again after d. Changes the materializer makes to its own fields
//   are written back to the cache when it returns — unless a newer state was
//   notified meanwhile: then the newer state wins and materialize runs again.
//   Write-back never counts as a change, so it does not cause another call.
// - Throw any exception to retry with capped exponential backoff and jitter
//   (KindOptions::backoff), or dmm::RetryAfter(d, "...") to retry after d.
//   Retries stop only after KindOptions::max_attempts failed attempts
//   (default: never); the matter is then `failed`, saying it gave up.
// - Throw dmm::TerminalError when retrying cannot help: the matter is marked
//   `failed` until its state changes or it is retried explicitly.
// - One identity is never materialized by two workers at once, across threads
//   and processes, provided materialize() honours its stop token: once
//   ctx.stop_requested(), return (or throw) within KindOptions::lease_margin
//   (default a third of lease_ttl, 5 s). A process that cannot renew its
//   lease (PostgreSQL unreachable, a frozen link) requests the token that
//   long before another worker may take the matter over. A materializer that
//   ignores it and runs on past its lease can overlap with the next holder;
//   its own write-back is then refused, but what it did outside dmm is not
//   undone (docs/RELIABILITY.md measures it; docs/DESIGN.md, "Self-expiry").
//
// Optional: `void finalize(Context&)` is called after Bucket::remove and
// before the matter is deleted, like a Kubernetes finalizer; it follows the
// same retry rules. Types without it are deleted at once.
// Optional: `std::string tenant() const` names the matter's fairness key:
// claims of the kind rotate across tenants (KindOptions::fairness_key).
#pragma once

#include <concepts>
#include <nlohmann/json.hpp>
#include <string>

#include "dmm/context.hpp"
#include "dmm/errors.hpp"
#include "dmm/result.hpp"

namespace dmm {

template <class T>
concept Materializer = std::default_initializable<T> && std::copy_constructible<T> &&
    requires(T& t, const T& ct, Context& ctx, const nlohmann::json& j) {
      { ct.identity() } -> std::convertible_to<std::string>;
      { t.materialize(ctx) } -> std::same_as<Result>;
      { nlohmann::json(ct) };
      { j.get<T>() } -> std::same_as<T>;
    };

// A tenant() member makes the kind fair across tenants: claims rotate
// across them (KindOptions::fairness_key).
template <class T>
concept HasTenant = requires(const T& t) {
  { t.tenant() } -> std::convertible_to<std::string>;
};

template <class T>
concept HasFinalize = requires(T& t, Context& ctx) { t.finalize(ctx); };

}  // namespace dmm
