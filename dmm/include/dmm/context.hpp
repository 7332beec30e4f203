// Context: what a materializer gets for one attempt.
//
// - stop_token(): requested when the process stops, when the lease on this
//   matter was lost, or KindOptions::lease_margin before it may be taken over
//   because no heartbeat could renew it (PostgreSQL unreachable). Long work
//   should check it and return or throw within lease_margin. A throw after a
//   stop request releases the matter without counting an attempt.
// - attempt(): 1 for the first attempt after a change of state or a success,
//   then 2, 3, ... while failures repeat.
// - log(): the bucket's logger; kind() and identity() name the matter so log
//   lines can say which one they are about.
// - notify(obj), matter<T>(id): the bucket's notify and get, for materializers
//   that manage other matters.
// - service<S>(): an object the application handed to Bucket::provide, such as
//   a client for the real thing being materialized.
// - ready(dep), require_ready(deps): whether the matters this one depends on
//   are materialized (see dmm/dependency.hpp).
// - generation(), checkpoint(obj): the generation being materialized, and a
//   way to store the matter's state before the attempt ends (dmm::Steps
//   records each step with it; see dmm/steps.hpp).
#pragma once

#include <optional>
#include <spdlog/logger.h>
#include <stop_token>
#include <string>
#include <string_view>

#include "dmm/dependency.hpp"
#include "dmm/detail/core.hpp"
#include "dmm/errors.hpp"

namespace dmm {

class Context {
 public:
  struct Init {
    detail::BucketCore* core;
    spdlog::logger* logger;
    std::string kind;
    std::string identity;
    int attempt;
    std::stop_token stop;
    // The lease and generation this attempt works under (checkpoint).
    std::int64_t id = 0;
    std::int64_t epoch = 0;
    std::int64_t generation = 0;
  };
  explicit Context(Init init) : init_(std::move(init)) {}

  std::stop_token stop_token() const { return init_.stop; }
  bool stop_requested() const { return init_.stop.stop_requested(); }
  int attempt() const { return init_.attempt; }
  spdlog::logger& log() const { return *init_.logger; }
  const std::string& kind() const { return init_.kind; }
  const std::string& identity() const { return init_.identity; }

  // Notify another matter (of any registered kind) from inside a materializer.
  template <class T>
  void notify(const T& obj) {
    const auto& kind = detail::kind_of(*init_.core, typeid(T), &detail::type_name<T>);
    std::vector<detail::JsonMatter> one;
    one.push_back({std::string(obj.identity()), nlohmann::json(obj)});
    detail::notify(*init_.core, kind, std::move(one));
  }

  // The stored state of another matter, or nullopt if there is none.
  template <class T>
  std::optional<T> matter(std::string_view identity) {
    const auto& kind = detail::kind_of(*init_.core, typeid(T), &detail::type_name<T>);
    auto state = detail::get(*init_.core, kind, identity);
    if (!state) return std::nullopt;
    return state->template get<T>();
  }

  // True when `dep` exists, is not being removed and its latest state has
  // been materialized (see dmm/dependency.hpp).
  bool ready(const Dependency& dep) { return detail::ready(*init_.core, dep); }

  // Throws NotReady naming the first of `deps` that is not ready. The matter
  // is notified again when that dependency becomes ready.
  void require_ready(const std::vector<Dependency>& deps) {
    for (const auto& dep : deps)
      if (!ready(dep))
        throw NotReady("waiting for " + dep.kind + " '" + dep.identity.substr(0, 200) + "' to be ready");
  }

  // The generation of the state this attempt materializes: it changes with
  // every notify of a different state, never with a write-back.
  std::int64_t generation() const { return init_.generation; }

  // Stores `obj` as the matter's state now, without waiting for the attempt
  // to return, so that what it records survives a crash. Returns false, and
  // stores nothing, if a newer state was notified meanwhile (that one wins:
  // the attempt should return, and the matter runs again with it). Throws
  // LeaseLost if this attempt no longer holds the lease, and InvalidArgument
  // for a state over BucketOptions::max_state_bytes. One round trip to
  // PostgreSQL; the generation is not bumped (no new attempt follows).
  template <class T>
  bool checkpoint(const T& obj) {
    return detail::checkpoint(*init_.core, init_.kind, init_.identity, init_.id, init_.epoch, init_.generation,
                              nlohmann::json(obj)) == detail::Checkpoint::saved;
  }

  // Counts a step's outcome for /metrics (used by dmm::Steps).
  void count_step(std::string_view outcome) { detail::count_step(*init_.core, init_.kind, outcome); }

  // The service of type S given to Bucket::provide; InvalidArgument if none.
  template <class S>
  S& service() {
    return *static_cast<S*>(detail::service(*init_.core, typeid(S), &detail::type_name<S>));
  }

 private:
  Init init_;
};

namespace detail {
// The stored state as T; a state that does not decode cannot be fixed by
// retrying, so it is a TerminalError naming the matter.
template <class T>
T decode(const nlohmann::json& state, const Context& ctx) {
  try {
    return state.get<T>();
  } catch (const nlohmann::json::exception& e) {
    throw TerminalError("kind '" + ctx.kind() + "' identity '" + ctx.identity().substr(0, 64) +
                        "': stored state does not decode into " + detail::type_name<T>() + ": " + e.what() +
                        "; notify a valid state to repair it (the stored state was left as it is)");
  }
}
}  // namespace detail

}  // namespace dmm
