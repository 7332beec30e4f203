// Bucket: opening, the registry of kinds, run/stop. The API entry points:
// api.cpp; option checks: options.cpp.
#include "dmm/bucket.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <thread>

#include "bucket/bucket_core.hpp"
#include "bucket/options.hpp"
#include "bucket/status.hpp"
#include "dmm/migrate.hpp"
#include "dmm/url.hpp"
#include "engine/work_stream_engine.hpp"
#include "operate/http.hpp"
#include "protocol/names.hpp"
#include "store/errors.hpp"
#include "store/registry.hpp"

namespace dmm {
namespace detail {
BucketCore::BucketCore(BucketOptions o)
    : options_(validated(std::move(o))),
      logger_(options_.logger ? options_.logger : spdlog::default_logger()),
      pool_(options_.postgres),
      pruner_(options_.name, options_.history_retention, *logger_) {
  if (options_.migrate) {
    int applied = migrate(options_.postgres);
    if (applied > 0)
      logger_->info("bucket '{}': applied {} migration(s) to {}", options_.name, applied, shown_postgres(options_.postgres));
  } else {
    for (const auto& m : migration_status(options_.postgres))
      if (!m.applied)
        throw MigrationError(fmt::format("bucket '{}': migration {} is not applied to {} and migrate=false; run the "
                                         "migrations (open once with migrate=true)",
                                         options_.name, m.name, shown_postgres(options_.postgres)));
  }
  // Fail now, not at the first notify, if the URL is unusable or leads to a
  // transaction pooler.
  refuse_transaction_pooling(pool_, options_.name);
  nats_ = std::make_unique<Nats>(
      NatsEndpoint{options_.nats, options_.nats_ca_file, options_.nats_cert_file, options_.nats_key_file,
                   options_.nats_creds_file, options_.nats_nkey_seed_file},
      options_.stream_replicas, options_.name, "dmm " + options_.worker_id, *logger_);
  nats_->on_publish_error([this](std::string_view kind) {
    metrics_.kind(std::string(kind)).publish_errors.fetch_add(1, std::memory_order_relaxed);
  });
}

Kind& BucketCore::kind(const std::string& name) {
  std::lock_guard lock(mu_);
  auto it = kinds_by_name_.find(name);
  if (it == kinds_by_name_.end())
    throw InvalidArgument(fmt::format("bucket '{}': unknown kind '{}'; register it with register_kind first",
                                      options_.name, name));
  return *it->second;
}

std::vector<Kind*> BucketCore::kinds() {
  std::lock_guard lock(mu_);
  std::vector<Kind*> out;
  for (auto& [name, kind] : kinds_by_name_) out.push_back(kind.get());
  return out;
}

WorkStream& BucketCore::register_kind(std::string name, KindOptions options, KindHooks hooks) {
  validate_name("kind", name);
  validate_kind_options(options, name);
  {
    std::lock_guard lock(mu_);
    if (kinds_by_name_.count(name))
      throw InvalidArgument(fmt::format("bucket '{}': kind '{}' is already registered", options_.name, name));
    if (auto it = kind_names_.find(hooks.type); it != kind_names_.end())
      throw InvalidArgument(fmt::format("bucket '{}': type {} is already registered as kind '{}'", options_.name,
                                        hooks.type_name, it->second));
  }
  nats_->ensure_consumers(name);
  // The SQL API's registry (docs/SQL.md): what dmm.notify and dmm.remove
  // cannot learn from C++.
  const KindRecord record{options_.name, name, static_cast<std::int64_t>(options_.max_state_bytes),
                          static_cast<bool>(hooks.finalize), static_cast<bool>(hooks.dependencies),
                          options.fairness_key || hooks.tenant, options_.worker_id};
  in_postgres(pool_, options_.name, fmt::format("register_kind('{}')", name),
              [&](pqxx::connection& conn) { record_kind(conn, record); });
  auto kind = std::make_unique<Kind>();
  kind->name = name, kind->options = options, kind->hooks = std::move(hooks);
  auto engine = std::make_unique<WorkStreamEngine>(
      EngineDeps{options_, options_.worker_id, logger_.get(), nats_.get(), metrics_, pruner_, this}, *kind);
  kind->engine = engine.get();
  kind->stream = std::make_unique<WorkStream>(std::move(engine));
  std::lock_guard lock(mu_);
  kind_names_[kind->hooks.type] = name;
  auto& stream = *kind->stream;
  kinds_by_name_[name] = std::move(kind);
  return stream;
}

const std::string& BucketCore::kind_of(std::type_index type, std::string (*type_name)()) {
  std::lock_guard lock(mu_);
  auto it = kind_names_.find(type);
  if (it == kind_names_.end())
    throw InvalidArgument(fmt::format("bucket '{}': type {} is not registered; call register_kind<T>(\"name\") "
                                      "before using it",
                                      options_.name, type_name()));
  return it->second;
}

void BucketCore::provide(std::type_index type, std::shared_ptr<void> service) {
  std::lock_guard lock(mu_);
  services_[type] = std::move(service);
}

void* BucketCore::service(std::type_index type, std::string (*type_name)()) {
  std::lock_guard lock(mu_);
  auto it = services_.find(type);
  if (it == services_.end())
    throw InvalidArgument(fmt::format("bucket '{}': no service of type {}; call bucket.provide(...) before work()",
                                      options_.name, type_name()));
  return it->second.get();
}

int BucketCore::serve_http(const std::string& address, const HttpOptions& options) {
  validate_http_options(options, options_.name);
  std::lock_guard lock(mu_);
  if (http_)
    throw InvalidArgument(
        fmt::format("bucket '{}': serve_http was already called (port {})", options_.name, http_->port()));
  http_ = std::make_shared<HttpServer>(address, status_endpoints(*this), options);
  return http_->port();
}

WorkStream& register_kind(BucketCore& core, std::string name, KindOptions options, KindHooks hooks) {
  return core.register_kind(std::move(name), std::move(options), std::move(hooks));
}

const std::string& kind_of(const BucketCore& core, std::type_index type, std::string (*type_name)()) {
  return const_cast<BucketCore&>(core).kind_of(type, type_name);
}

void provide(BucketCore& core, std::type_index type, std::shared_ptr<void> service) {
  core.provide(type, std::move(service));
}

void* service(BucketCore& core, std::type_index type, std::string (*type_name)()) {
  return core.service(type, type_name);
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
                                      core_->options().name));
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

int Bucket::serve_http(const std::string& address, const HttpOptions& options) {
  return core_->serve_http(address, options);
}

void Bucket::stop() {
  for (auto* kind : core_->kinds()) kind->stream->stop();
}

const std::string& Bucket::name() const { return core_->options().name; }
const std::string& Bucket::worker_id() const { return core_->worker_id(); }

}  // namespace dmm
