// Dependencies between matters: "this web server needs these files first".
//
// Contract:
// - A materializer declares what it depends on with an optional member
//     std::vector<dmm::Dependency> dependencies() const;
//   dmm stores the edges with every notify/update of the matter, in the same
//   transaction as its state. A dependency may name a matter that does not
//   exist yet (it is simply not ready).
// - ctx.ready(dep) is true when the dependency exists, is not being removed,
//   and its latest state has been materialized (phase ready and
//   materialized_generation == generation). ctx.require_ready(deps) throws
//   dmm::NotReady naming the first dependency that is not: the matter retries
//   with backoff (phase retrying, the error says what it waits for).
// - When a dependency is materialized at a new generation (it became ready
//   after being created or changed), every matter that depends on it is
//   notified with its own stored state, in the same statement as the
//   dependency's write-back: durable, no polling, and never lost even if the
//   dependent is being materialized right then (it runs again).
// - Removal is refused, not ordered: Bucket::remove of a matter that another
//   live matter depends on throws DependencyError naming the dependents;
//   remove (or change) the dependents first.
// - A notify or update whose dependencies would close a cycle (a matter that
//   depends, directly or not, on itself) throws DependencyError naming the
//   cycle; nothing of that call is stored.
#pragma once

#include <concepts>
#include <string>
#include <vector>

#include "dmm/errors.hpp"

namespace dmm {

// A matter of another (or the same) kind, by registered kind name and identity.
struct Dependency {
  std::string kind;
  std::string identity;
  friend bool operator==(const Dependency&, const Dependency&) = default;
};

// A refused removal (dependents exist) or a dependency cycle. Nothing was
// stored or removed.
class DependencyError : public Error {
 public:
  using Error::Error;
};

// Thrown by Context::require_ready: a dependency is not ready yet. It is an
// ordinary (retryable) error; the matter is notified again when the
// dependency becomes ready, so the backoff does not delay it.
class NotReady : public Error {
 public:
  using Error::Error;
};

template <class T>
concept HasDependencies = requires(const T& t) {
  { t.dependencies() } -> std::convertible_to<std::vector<Dependency>>;
};

}  // namespace dmm
