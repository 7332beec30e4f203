// Bucket: opening, the type-erased API entry points, run/stop.
#include "dmm/bucket.hpp"

#include <cctype>
#include <fmt/format.h>
#include <random>
#include <spdlog/spdlog.h>
#include <thread>
#include <unistd.h>

#include "bucket/bucket_core.hpp"
#include "dmm/migrate.hpp"
#include "dmm/url.hpp"
#include "operate/http.hpp"
#include "protocol/names.hpp"
#include "store/sql.hpp"
#include "store/store.hpp"
#include "engine/work_stream_engine.hpp"

namespace dmm {
namespace detail {
namespace {

std::string default_worker_id() {
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  std::random_device rd;
  return fmt::format("{}:{}:{:04x}", host, getpid(), rd() & 0xffff);
}

BucketOptions validated(BucketOptions o) {
  validate_name("bucket", o.name);
  if (o.postgres.empty())
    throw InvalidArgument(fmt::format("bucket '{}': BucketOptions::postgres is empty; give a PostgreSQL URL such as "
                                      "postgresql://user@127.0.0.1:5432/db",
                                      o.name));
  if (o.nats.empty())
    throw InvalidArgument(
        fmt::format("bucket '{}': BucketOptions::nats is empty; give a NATS URL such as nats://127.0.0.1:4222", o.name));
  if (o.token_grace.count() <= 0)
    throw InvalidArgument(fmt::format("bucket '{}': token_grace must be positive (default 5s)", o.name));
  if (o.stream_replicas < 1 || o.stream_replicas > 5)
    throw InvalidArgument(fmt::format("bucket '{}': stream_replicas must be 1..5 (default 1; 3 on a cluster)", o.name));
  if (o.max_state_bytes == 0)
    throw InvalidArgument(fmt::format("bucket '{}': max_state_bytes must be positive (default 1 MiB)", o.name));
  if (o.history_retention.count() <= 0)
    throw InvalidArgument(fmt::format("bucket '{}': history_retention must be positive (default 7 days)", o.name));
  if (o.worker_id.empty()) o.worker_id = default_worker_id();
  return o;
}

void check_state_size(const BucketCore& core, const std::string& kind, const JsonMatter& m) {
  std::size_t size = 0;
  try {
    size = m.state.dump().size();
  } catch (const nlohmann::json::exception& e) {
    throw InvalidArgument(fmt::format("kind '{}' identity '{}': state cannot be stored as JSON ({}); strings in a "
                                      "state must be valid UTF-8",
                                      kind, m.identity.substr(0, 64), e.what()));
  }
  if (size > core.options.max_state_bytes)
    throw InvalidArgument(fmt::format("kind '{}' identity '{}': state is {} bytes, over the bucket's limit of {} "
                                      "(BucketOptions::max_state_bytes); keep large data elsewhere and store a "
                                      "reference",
                                      kind, m.identity.substr(0, 64), size, core.options.max_state_bytes));
}

void validate_matter(const BucketCore& core, const std::string& kind, const JsonMatter& m) {
  validate_identity(kind, m.identity);
  check_state_size(core, kind, m);
}

std::string describe_matter(const std::string& kind_and_identity) {
  const auto space = kind_and_identity.find(' ');
  return fmt::format("{} '{}'", kind_and_identity.substr(0, space), kind_and_identity.substr(space + 1, 200));
}

// The dependencies the matters declare, validated; empty if the kind's type
// declares none.
std::vector<MatterDependencies> dependencies_of(const Kind& k, const std::vector<JsonMatter>& matters) {
  std::vector<MatterDependencies> out;
  if (!k.hooks.dependencies) return out;
  for (const auto& m : matters) {
    MatterDependencies md{m.identity, k.hooks.dependencies(m.state)};
    for (const auto& dep : md.dependencies) {
      try {
        validate_name("kind", dep.kind);
        validate_identity(dep.kind, dep.identity);
      } catch (const InvalidArgument& e) {
        throw InvalidArgument(fmt::format("kind '{}' identity '{}': invalid dependency: {}", k.name,
                                          m.identity.substr(0, 64), e.what()));
      }
    }
    out.push_back(std::move(md));
  }
  return out;
}

// Stores the edges in the caller's transaction; a cycle is a DependencyError
// (the caller's transaction must then be rolled back).
void record_dependencies(pqxx::transaction_base& tx, const BucketCore& core, const std::string& kind,
                         const std::vector<MatterDependencies>& deps) {
  if (deps.empty()) return;
  auto cycle = store_dependencies(tx, core.options.name, kind, deps);
  if (!cycle) return;
  std::string path;
  for (const auto& step : *cycle) path += (path.empty() ? "" : " -> ") + describe_matter(step);
  throw DependencyError(fmt::format("bucket '{}': dependency cycle {}; a matter cannot depend on itself, directly or "
                                    "not; nothing was stored",
                                    core.options.name, path));
}

std::string trimmed(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  return s;
}

// Runs fn on a pooled connection (see PgPool::with_connection for the
// retries); what PostgreSQL still fails with becomes a dmm error naming the
// bucket and the call (`what`). `autocommit`: fn may run its one statement
// outside a transaction, so a connection that breaks meanwhile leaves it in
// doubt (it may have committed before the break).
template <class Fn>
auto in_postgres(BucketCore& core, const std::string& what, Fn&& fn, bool autocommit = false) {
  try {
    return core.pool.with_connection(std::forward<Fn>(fn));
  } catch (const pqxx::in_doubt_error& e) {
    throw ConnectionError(fmt::format("bucket '{}': {}: the connection to PostgreSQL at {} broke while committing "
                                      "({}); it may or may not have taken effect: repeat it (an absolute state is "
                                      "safe to notify again)",
                                      core.options.name, what, mask_url(core.options.postgres), trimmed(e.what())));
  } catch (const pqxx::broken_connection& e) {
    const char* effect = autocommit ? "it may or may not have taken effect: repeat it when the server is back (an "
                                      "absolute state is safe to notify again)"
                                    : "nothing of it took effect: repeat it when the server is back";
    throw ConnectionError(fmt::format("bucket '{}': {}: lost the connection to PostgreSQL at {} ({}); {}",
                                      core.options.name, what, mask_url(core.options.postgres), trimmed(e.what()),
                                      effect));
  } catch (const pqxx::sql_error& e) {
    throw DatabaseError(fmt::format("bucket '{}': {}: PostgreSQL refused it (SQLSTATE {}): {}; nothing of it took "
                                    "effect",
                                    core.options.name, what, e.sqlstate(), trimmed(e.what())),
                        e.sqlstate());
  }
}

std::string about(const std::string& call, const std::string& kind, std::string_view identity) {
  return fmt::format("{} of kind '{}' identity '{}'", call, kind, identity.substr(0, 64));
}

}  // namespace

BucketCore::BucketCore(BucketOptions o)
    : options(validated(std::move(o))),
      logger(options.logger ? options.logger : spdlog::default_logger()),
      worker_id(options.worker_id),
      pool(options.postgres) {
  if (options.migrate) {
    int applied = migrate(options.postgres);
    if (applied > 0) logger->info("bucket '{}': applied {} migration(s) to {}", options.name, applied,
                                  mask_url(options.postgres));
  } else {
    for (const auto& m : migration_status(options.postgres))
      if (!m.applied)
        throw MigrationError(fmt::format("bucket '{}': migration {} is not applied to {} and migrate=false; run the "
                                         "migrations (open once with migrate=true)",
                                         options.name, m.name, mask_url(options.postgres)));
  }
  pool.acquire();  // fail now, not at the first notify, if the URL is unusable
  nats = std::make_unique<Nats>(options.nats,
                                Nats::Tls{options.nats_ca_file, options.nats_cert_file, options.nats_key_file},
                                options.stream_replicas, options.name, "dmm " + worker_id, *logger);
  nats->count_errors_in(&metrics);
}

Kind& BucketCore::kind(const std::string& name) {
  std::lock_guard lock(mu);
  auto it = kinds_by_name.find(name);
  if (it == kinds_by_name.end())
    throw InvalidArgument(fmt::format("bucket '{}': unknown kind '{}'; register it with register_kind first",
                                      options.name, name));
  return *it->second;
}

void BucketCore::publish(const std::vector<TokenOwed>& owed) {
  std::map<std::string_view, std::vector<std::int64_t>> by_kind;
  for (const auto& t : owed) by_kind[t.kind].push_back(t.id);
  for (const auto& [kind, ids] : by_kind) nats->publish(std::string(kind), ids);
}

std::vector<Kind*> BucketCore::kinds() {
  std::lock_guard lock(mu);
  std::vector<Kind*> out;
  for (auto& [name, kind] : kinds_by_name) out.push_back(kind.get());
  return out;
}

WorkStream& register_kind(BucketCore& core, std::string name, KindOptions options, KindHooks hooks) {
  validate_name("kind", name);
  validate_kind_options(options, name);
  {
    std::lock_guard lock(core.mu);
    if (core.kinds_by_name.count(name))
      throw InvalidArgument(fmt::format("bucket '{}': kind '{}' is already registered", core.options.name, name));
    if (auto it = core.kind_names.find(hooks.type); it != core.kind_names.end())
      throw InvalidArgument(fmt::format("bucket '{}': type {} is already registered as kind '{}'", core.options.name,
                                        hooks.type_name, it->second));
  }
  core.nats->ensure_consumer(name);
  auto kind = std::make_unique<Kind>(Kind{name, options, std::move(hooks), nullptr});
  kind->stream = std::make_unique<WorkStream>(std::make_unique<WorkStreamEngine>(core, *kind));
  std::lock_guard lock(core.mu);
  core.kind_names[kind->hooks.type] = name;
  auto& stream = *kind->stream;
  core.kinds_by_name[name] = std::move(kind);
  return stream;
}

const std::string& kind_of(const BucketCore& core, std::type_index type, std::string (*type_name)()) {
  std::lock_guard lock(const_cast<BucketCore&>(core).mu);
  auto it = core.kind_names.find(type);
  if (it == core.kind_names.end())
    throw InvalidArgument(fmt::format("bucket '{}': type {} is not registered; call register_kind<T>(\"name\") "
                                      "before using it",
                                      core.options.name, type_name()));
  return it->second;
}

namespace {

constexpr std::size_t kChunk = NotifyGroups::kMaxBatch;  // matters per statement of a bulk notify

// The last state of each identity (ON CONFLICT cannot touch a row twice), in
// identity order, so concurrent bulk inserts take index locks in one order.
std::vector<JsonMatter> last_state_wins(std::vector<JsonMatter> matters) {
  std::map<std::string, std::size_t> last;
  for (std::size_t i = 0; i < matters.size(); ++i) last[matters[i].identity] = i;
  std::vector<JsonMatter> unique;
  unique.reserve(last.size());
  for (auto& [identity, index] : last) unique.push_back(std::move(matters[index]));
  return unique;
}

// Calls `each(chunk, first)` for the matters in statements of kChunk, moving
// them (states can be large); `first` is the index of the chunk's first one.
template <typename F>
void for_each_chunk(std::vector<JsonMatter> matters, const F& each) {
  for (std::size_t begin = 0; begin < matters.size(); begin += kChunk) {
    const auto end = std::min(matters.size(), begin + kChunk);
    std::vector<JsonMatter> chunk(std::make_move_iterator(matters.begin() + static_cast<std::ptrdiff_t>(begin)),
                                  std::make_move_iterator(matters.begin() + static_cast<std::ptrdiff_t>(end)));
    each(chunk, begin);
  }
}

// Stores `chunk` (distinct identities, in identity order) and publishes the
// tokens owed. `what` names the call in errors.
void store_notifies(BucketCore& core, const std::string& kind, const std::vector<JsonMatter>& chunk,
                    const std::vector<MatterDependencies>& deps, const std::string& what) {
  // Without dependencies the upsert is the whole notify: one statement,
  // committed on its own, saves the BEGIN and COMMIT round trips (single
  // notifies/s +25–40%, bench/results.md). Repeating it is harmless.
  auto owed = in_postgres(
      core, what,
      [&](pqxx::connection& conn) {
        if (deps.empty()) {
          pqxx::nontransaction tx(conn);
          return upsert_matters(tx, core.options.name, kind, chunk, core.options.token_grace);
        }
        pqxx::work tx(conn);
        auto ids = upsert_matters(tx, core.options.name, kind, chunk, core.options.token_grace);
        record_dependencies(tx, core, kind, deps);
        tx.commit();
        return ids;
      },
      deps.empty());
  core.publish(kind, owed);
}

}  // namespace

void notify(BucketCore& core, const std::string& kind, std::vector<JsonMatter> matters) {
  const auto& k = core.kind(kind);
  for (const auto& m : matters) validate_matter(core, kind, m);
  if (matters.size() == 1 && !k.hooks.dependencies) {
    // Written together with concurrent notifies of the kind (notify_group.hpp).
    core.notify_groups.notify(kind, std::move(matters.front()), [&](std::vector<JsonMatter>& batch) {
      store_notifies(core, kind, batch, {},
                     batch.size() == 1 ? about("notify", kind, batch.front().identity)
                                       : fmt::format("notify of {} matters of kind '{}' (concurrent notify calls, "
                                                     "written together)",
                                                     batch.size(), kind));
      if (batch.size() > 1)
        core.metrics.kind(kind).notifies_grouped.fetch_add(batch.size(), std::memory_order_relaxed);
    });
    return;
  }
  auto unique = last_state_wins(std::move(matters));
  const auto total = unique.size();
  for_each_chunk(std::move(unique), [&](const std::vector<JsonMatter>& chunk, std::size_t begin) {
    store_notifies(core, kind, chunk, dependencies_of(k, chunk),
                   total == 1 ? about("notify", kind, chunk.front().identity)
                              : fmt::format("notify of {} matters of kind '{}' (matters {}-{}{})", total, kind,
                                            begin + 1, begin + chunk.size(),
                                            begin > 0 ? "; the ones before were stored" : ""));
  });
}

void notify_in(BucketCore& core, pqxx::transaction_base& txn, const std::string& kind,
               std::vector<JsonMatter> matters) {
  const auto& k = core.kind(kind);
  for (const auto& m : matters) validate_matter(core, kind, m);
  for_each_chunk(last_state_wins(std::move(matters)), [&](const std::vector<JsonMatter>& chunk, std::size_t) {
    // Kicked now: a sweeper woken by the NOTIFY at commit publishes the tokens.
    upsert_matters(txn, core.options.name, kind, chunk, std::chrono::milliseconds(0), false);
    record_dependencies(txn, core, kind, dependencies_of(k, chunk));
  });
  txn.exec_params("SELECT pg_notify($1, $2)", std::string(kWakeChannel), core.options.name);
}

std::optional<nlohmann::json> get(BucketCore& core, const std::string& kind, std::string_view identity) {
  core.kind(kind);
  validate_identity(kind, identity);
  return in_postgres(core, about("get", kind, identity), [&](pqxx::connection& conn) -> std::optional<nlohmann::json> {
    pqxx::nontransaction tx(conn);
    auto rows = tx.exec_params("SELECT state::text FROM dmm.matter WHERE bucket = $1 AND kind = $2 AND identity = $3",
                               core.options.name, kind, std::string(identity));
    if (rows.empty()) return std::nullopt;
    return nlohmann::json::parse(rows[0][0].as<std::string>());
  });
}

bool update(BucketCore& core, const std::string& kind, std::string_view identity,
            const std::function<void(nlohmann::json&)>& change) {
  const auto& k = core.kind(kind);
  validate_identity(kind, identity);
  std::optional<std::vector<std::int64_t>> owed = in_postgres(
      core, about("update", kind, identity), [&](pqxx::connection& conn) -> std::optional<std::vector<std::int64_t>> {
        pqxx::work tx(conn);
        auto rows = tx.exec_params(
            "SELECT state::text FROM dmm.matter WHERE bucket = $1 AND kind = $2 AND identity = $3 FOR UPDATE",
            core.options.name, kind, std::string(identity));
        if (rows.empty()) return std::nullopt;
        JsonMatter m{std::string(identity), nlohmann::json::parse(rows[0][0].as<std::string>())};
        change(m.state);
        check_state_size(core, kind, m);
        std::vector<JsonMatter> one;
        one.push_back(std::move(m));
        const auto deps = dependencies_of(k, one);
        auto ids = upsert_matters(tx, core.options.name, kind, one, core.options.token_grace);
        record_dependencies(tx, core, kind, deps);
        tx.commit();
        return ids;
      });
  if (!owed) return false;
  core.publish(kind, *owed);
  return true;
}

bool remove(BucketCore& core, const std::string& kind, std::string_view identity) {
  auto& k = core.kind(kind);
  validate_identity(kind, identity);
  const bool finalize = static_cast<bool>(k.hooks.finalize);
  const std::string id(identity);
  auto rows = in_postgres(core, about("remove", kind, identity), [&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    if (tx.exec_params("SELECT 1 FROM dmm.matter WHERE bucket = $1 AND kind = $2 AND identity = $3 FOR UPDATE",
                       core.options.name, kind, id)
            .empty())
      return pqxx::result();
    if (auto dependents = dependents_of(tx, core.options.name, kind, id, 6); !dependents.empty()) {
      std::string names;
      for (std::size_t i = 0; i < std::min<std::size_t>(dependents.size(), 5); ++i)
        names += (i ? ", " : "") + fmt::format("{} '{}'", dependents[i].kind, dependents[i].identity.substr(0, 200));
      if (dependents.size() > 5) names += ", ...";
      throw DependencyError(fmt::format("bucket '{}': cannot remove {} '{}': {} depend(s) on it; remove them, or "
                                        "change their dependencies, first (nothing was removed)",
                                        core.options.name, kind, id.substr(0, 200), names));
    }
    pqxx::result result;
    if (!finalize) {
      result = tx.exec_params(
          "DELETE FROM dmm.matter WHERE bucket = $1 AND kind = $2 AND identity = $3 RETURNING id, false",
          core.options.name, kind, id);
      forget_kicks(tx, ids_of(result));
      delete_dependencies(tx, core.options.name, kind, id);
    } else {
      // Like a notify of "gone": a new generation that owes a finalize.
      result = tx.exec_params(R"sql(
UPDATE dmm.matter SET
  deleted_at = coalesce(deleted_at, now()),
  generation = generation + 1,
  phase = CASE WHEN lease_until >= now() THEN phase ELSE 'deleting' END,
  attempts = 0, last_error = NULL, due_at = now(), updated_at = now()
WHERE bucket = $1 AND kind = $2 AND identity = $3
RETURNING id, lease_until IS NULL OR lease_until < now())sql",
                              core.options.name, kind, id);
      arm_kicks(tx, ids_of(result), core.options.token_grace);
    }
    tx.commit();
    return result;
  });
  if (rows.empty()) return false;
  if (rows[0][1].as<bool>()) core.publish(kind, {rows[0][0].as<std::int64_t>()});
  return true;
}

bool retry(BucketCore& core, const std::string& kind, std::string_view identity) {
  core.kind(kind);
  validate_identity(kind, identity);
  auto rows = in_postgres(core, about("retry", kind, identity), [&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    auto result = tx.exec_params(R"sql(
UPDATE dmm.matter SET phase = CASE WHEN deleted_at IS NOT NULL THEN 'deleting' ELSE 'pending' END,
  attempts = 0, due_at = now(), updated_at = now()
WHERE bucket = $1 AND kind = $2 AND identity = $3 AND phase IN ('failed', 'retrying')
RETURNING id)sql",
                                 core.options.name, kind, std::string(identity));
    arm_kicks(tx, ids_of(result), core.options.token_grace);
    tx.commit();
    return result;
  });
  if (rows.empty()) return false;
  core.publish(kind, {rows[0][0].as<std::int64_t>()});
  return true;
}

bool ready(BucketCore& core, const Dependency& dep) {
  validate_name("kind", dep.kind);
  validate_identity(dep.kind, dep.identity);
  return in_postgres(core, about("ready", dep.kind, dep.identity), [&](pqxx::connection& conn) {
    pqxx::nontransaction tx(conn);
    auto rows = tx.exec_params(
        "SELECT 1 FROM dmm.matter WHERE bucket = $1 AND kind = $2 AND identity = $3 AND phase = 'ready' "
        "AND materialized_generation = generation AND deleted_at IS NULL",
        core.options.name, dep.kind, dep.identity);
    return !rows.empty();
  });
}

void provide(BucketCore& core, std::type_index type, std::shared_ptr<void> service) {
  std::lock_guard lock(core.mu);
  core.services[type] = std::move(service);
}

void* service(BucketCore& core, std::type_index type, std::string (*type_name)()) {
  std::lock_guard lock(core.mu);
  auto it = core.services.find(type);
  if (it == core.services.end())
    throw InvalidArgument(fmt::format("bucket '{}': no service of type {}; call bucket.provide(...) before work()",
                                      core.options.name, type_name()));
  return it->second.get();
}

}  // namespace detail

Bucket::Bucket(std::shared_ptr<detail::BucketCore> core) : core_(std::move(core)) {}
Bucket::Bucket(Bucket&&) noexcept = default;
Bucket& Bucket::operator=(Bucket&&) noexcept = default;

Bucket::~Bucket() {
  if (!core_) return;
  stop();
}

Bucket Bucket::open(BucketOptions options) { return Bucket(std::make_shared<detail::BucketCore>(std::move(options))); }

void Bucket::run() {
  auto kinds = core_->kinds();
  if (kinds.empty())
    throw InvalidArgument(fmt::format("bucket '{}': run() with no kinds registered; call register_kind first",
                                      core_->options.name));
  std::vector<std::jthread> threads;
  std::exception_ptr failure;
  std::mutex failure_mu;
  for (auto* kind : kinds)
    threads.emplace_back([&, kind] {
      try {
        kind->stream->work();
      } catch (...) {
        std::lock_guard lock(failure_mu);
        if (!failure) failure = std::current_exception();
        stop();
      }
    });
  threads.clear();  // joins
  if (failure) std::rethrow_exception(failure);
}

int Bucket::serve_http(const std::string& address) {
  std::lock_guard lock(core_->mu);
  if (core_->http)
    throw InvalidArgument(fmt::format("bucket '{}': serve_http was already called (port {})", core_->options.name,
                                      core_->http->port()));
  core_->http = std::make_shared<detail::HttpServer>(*core_, address);
  return core_->http->port();
}

void Bucket::stop() {
  for (auto* kind : core_->kinds()) kind->stream->stop();
}

const std::string& Bucket::name() const { return core_->options.name; }
const std::string& Bucket::worker_id() const { return core_->worker_id; }

}  // namespace dmm
