// Bucket: opening, the registry of kinds, run/stop. The API entry points:
// api.cpp; option checks: options.cpp.
#include "dmm/bucket.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <thread>

#include "bucket/bucket_core.hpp"
#include "bucket/options.hpp"
#include "dmm/migrate.hpp"
#include "dmm/url.hpp"
#include "engine/work_stream_engine.hpp"
#include "operate/http.hpp"
#include "protocol/names.hpp"

namespace dmm {
namespace detail {
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
  nats = std::make_unique<Nats>(NatsEndpoint{options.nats, options.nats_ca_file, options.nats_cert_file,
                                             options.nats_key_file},
                                options.stream_replicas, options.name, "dmm " + worker_id, *logger);
  nats->on_publish_error([this](std::string_view kind) {
    metrics.kind(std::string(kind)).publish_errors.fetch_add(1, std::memory_order_relaxed);
  });
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
