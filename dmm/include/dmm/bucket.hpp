// Bucket: a namespace of matters — rows in PostgreSQL's `dmm.matter` plus one
// JetStream stream of work tokens — and the API an application uses.
//
// Contract:
// - open() connects to both servers, applies the embedded migrations (under an
//   advisory lock; an applied migration that was edited is a MigrationError)
//   and creates or checks the stream. Unreachable servers or wrong
//   credentials are a ConnectionError naming the URL (password masked).
// - A notify that returned is durable: it is committed in PostgreSQL. Its
//   token is published after commit; if the token is lost, the sweeper sends
//   another within BucketOptions::token_grace.
// - Notifying the state a matter already has is a cheap no-op (observers may
//   push absolute state at a high rate); a different state bumps the
//   matter's generation and schedules a materialization. A state notified
//   while a materialization runs is never overwritten by its write-back.
// - Identities are 1-1024 bytes of UTF-8 without NUL; states are JSON of at
//   most BucketOptions::max_state_bytes. Anything else is InvalidArgument and
//   nothing is stored.
// - serve_http (off unless called) serves, on a thread of its own:
//   /metrics  Prometheus text format, per kind: dmm_materializations_total
//             {outcome}, dmm_materialization_duration_seconds (histogram),
//             dmm_in_flight, dmm_due, dmm_matters{phase}, dmm_retries_total,
//             dmm_lease_takeovers_total, dmm_token_publish_errors_total,
//             dmm_token_ack_errors_total, dmm_notifies_grouped_total;
//             dmm_gave_up; per bucket: dmm_postgres_up
//             (counters are this process's);
//   /healthz  200 while the process is alive;
//   /readyz   200 when PostgreSQL answers, NATS is connected and every
//             registered kind's consumer is bound (its work() runs), else 503
//             with the failing checks;
//   /         the web view: matters by kind and phase, a chart of the last
//             15 minutes (matters by phase, materializations/s, errors/s;
//             SVG drawn by the server), filters, a search by identity
//             prefix, identities in natural order, 200 a page; and
//             /matter?kind=K&identity=I with state, history and why;
//   POST /matter/retry, /matter/remove (kind, identity): the actions of
//             dmmctl retry and remove, from the matter's page; off (403)
//             unless HttpOptions::action_token is set, and refused (403)
//             without that token.
//   Reads have no authentication: bind it to a trusted interface.
// - Every method is safe to call from any thread.
#pragma once

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dmm/detail/core.hpp"
#include "dmm/materializer.hpp"
#include "dmm/options.hpp"
#include "dmm/work_stream.hpp"

namespace dmm {

class Bucket {
 public:
  // Connects, migrates and checks the stream; see the contract above.
  static Bucket open(BucketOptions options);

  Bucket(Bucket&&) noexcept;
  Bucket& operator=(Bucket&&) noexcept;
  ~Bucket();  // stops workers still running and waits for them

  // Declares kind `name` (1-64 characters from [A-Za-z0-9_-]) for type T and
  // creates or checks its durable consumer. Every process that notifies,
  // reads or works matters of T registers it, with the same name. The
  // returned WorkStream lives as long as the bucket.
  template <Materializer T>
  WorkStream& register_kind(std::string name, KindOptions options = {}) {
    detail::KindHooks hooks;
    hooks.type = typeid(T);
    hooks.type_name = detail::type_name<T>();
    hooks.materialize = [](nlohmann::json& state, Context& ctx) {
      T obj = detail::decode<T>(state, ctx);
      Result result = obj.materialize(ctx);
      state = nlohmann::json(obj);
      return result;
    };
    if constexpr (HasFinalize<T>) {
      hooks.finalize = [](nlohmann::json& state, Context& ctx) {
        T obj = detail::decode<T>(state, ctx);
        obj.finalize(ctx);
      };
    }
    if constexpr (HasDependencies<T>) {
      hooks.dependencies = [](const nlohmann::json& state) {
        return std::vector<Dependency>(state.get<T>().dependencies());
      };
    }
    if constexpr (HasTenant<T>) {
      hooks.tenant = [](const nlohmann::json& state) { return std::string(state.get<T>().tenant()); };
    }
    return detail::register_kind(*core_, std::move(name), options, std::move(hooks));
  }

  // Stores the absolute state of one matter and schedules its materialization.
  // Committed when it returns. Concurrent notifies of one kind (without
  // dependencies) are written together in one statement and commit; a
  // refused one fails alone. `options`: when the work is due (a delay).
  template <Materializer T>
  void notify(const T& obj, const NotifyOptions& options = {}) {
    std::vector<detail::JsonMatter> one;
    one.push_back({std::string(obj.identity()), nlohmann::json(obj)});
    detail::notify(*core_, kind<T>(), std::move(one), options);
  }

  // Many matters of one kind in few statements (bulk loads). If an identity
  // appears more than once, the last state wins.
  template <Materializer T>
  void notify_many(std::span<const T> objs, const NotifyOptions& options = {}) {
    std::vector<detail::JsonMatter> many;
    many.reserve(objs.size());
    for (const T& obj : objs) many.push_back({std::string(obj.identity()), nlohmann::json(obj)});
    detail::notify(*core_, kind<T>(), std::move(many), options);
  }
  template <Materializer T>
  void notify_many(const std::vector<T>& objs, const NotifyOptions& options = {}) {
    notify_many(std::span<const T>(objs), options);
  }

  // notify inside the caller's own transaction: the state commits or rolls
  // back with the application's data. After commit, a sweeper listening on
  // the bucket's channel (in any worker process) publishes the token.
  template <Materializer T>
  void notify(pqxx::transaction_base& txn, const T& obj, const NotifyOptions& options = {}) {
    std::vector<detail::JsonMatter> one;
    one.push_back({std::string(obj.identity()), nlohmann::json(obj)});
    detail::notify_in(*core_, txn, kind<T>(), std::move(one), options);
  }
  // Many matters in the caller's transaction, in few statements (as
  // notify_many; the last state of an identity wins). One notify(txn, obj)
  // per matter costs two statements each (docs/DESIGN.md, "Protocol").
  template <Materializer T>
  void notify_many(pqxx::transaction_base& txn, std::span<const T> objs, const NotifyOptions& options = {}) {
    std::vector<detail::JsonMatter> many;
    many.reserve(objs.size());
    for (const T& obj : objs) many.push_back({std::string(obj.identity()), nlohmann::json(obj)});
    detail::notify_in(*core_, txn, kind<T>(), std::move(many), options);
  }
  template <Materializer T>
  void notify_many(pqxx::transaction_base& txn, const std::vector<T>& objs, const NotifyOptions& options = {}) {
    notify_many(txn, std::span<const T>(objs), options);
  }

  // The stored state of a matter, or nullopt if there is none. A state that
  // does not decode into T throws nlohmann::json::exception.
  template <Materializer T>
  std::optional<T> get(std::string_view identity) {
    auto state = detail::get(*core_, kind<T>(), identity);
    if (!state) return std::nullopt;
    return state->template get<T>();
  }

  // Atomic read-modify-write of one matter (SELECT ... FOR UPDATE, then the
  // same upsert as notify): the way an observer records the part of the state
  // it knows without overwriting the rest. Returns false, changing nothing,
  // if the matter does not exist. `change` must not change identity().
  template <Materializer T, class Fn>
  bool update(std::string_view identity, Fn&& change) {
    std::string id(identity);
    return detail::update(*core_, kind<T>(), identity, [&](nlohmann::json& state) {
      T obj = state.get<T>();
      change(obj);
      if (std::string(obj.identity()) != id)
        throw InvalidArgument("update of " + kind<T>() + " '" + id + "' changed its identity to '" +
                              std::string(obj.identity()) + "': identities are fixed; notify a new matter instead");
      state = nlohmann::json(obj);
    });
  }

  // Removes a matter: at once if T has no finalize, otherwise it is marked
  // `deleting` and deleted after finalize succeeds. A notify before that
  // cancels the removal. Returns false if there was no such matter.
  // DependencyError if another live matter depends on it (dmm/dependency.hpp).
  template <Materializer T>
  bool remove(std::string_view identity) {
    return detail::remove(*core_, kind<T>(), identity);
  }

  // Runs a `failed` (or backing-off `retrying`) matter again now, with its
  // attempts reset, as a new generation of the same state (so a dmm::Steps
  // action that rolled back starts over). Returns false if there is no such
  // matter in those phases.
  template <Materializer T>
  bool retry(std::string_view identity) {
    return detail::retry(*core_, kind<T>(), identity);
  }

  // Makes `service` available to materializers as ctx.service<S>().
  template <class S>
  void provide(std::shared_ptr<S> service) {
    detail::provide(*core_, typeid(S), std::static_pointer_cast<void>(std::move(service)));
  }

  // Serves the HTTP endpoint (see the contract above) on `address`:
  // ":9464" listens on every interface, "127.0.0.1:9464" on loopback only,
  // port 0 on any free port. Returns the port. Call at most once; Error if the
  // address cannot be bound, InvalidArgument if it or `options` is malformed.
  int serve_http(const std::string& address, const HttpOptions& options = {});

  // Runs the WorkStreams of every registered kind until stop().
  void run();
  // Stops run() and every WorkStream::work() of this bucket; returns at once.
  // Final: a run() after stop() returns as soon as it has started (a stop that
  // came first, e.g. from a signal during start-up, is not lost); open a new
  // Bucket to work again.
  void stop();

  const std::string& name() const;
  // This process's worker id, as it appears in leases.
  const std::string& worker_id() const;

  // The registered kind name of T; InvalidArgument if T was not registered.
  template <class T>
  const std::string& kind() const {
    return detail::kind_of(*core_, typeid(T), &detail::type_name<T>);
  }

 private:
  explicit Bucket(std::shared_ptr<detail::BucketCore> core);
  std::shared_ptr<detail::BucketCore> core_;
};

}  // namespace dmm
