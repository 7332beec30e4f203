// The engine behind a Bucket handle: its connections, the registry of kinds
// and their WorkStreams, and the wiring that hands each engine what it
// depends on (engine/deps.hpp). Shared by the Bucket and every thread
// working for it.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <spdlog/logger.h>
#include <string>
#include <typeindex>
#include <utility>
#include <vector>

#include "dmm/detail/core.hpp"
#include "dmm/options.hpp"
#include "dmm/work_stream.hpp"
#include "engine/deps.hpp"
#include "engine/history_pruner.hpp"
#include "engine/metrics.hpp"
#include "engine/notify_group.hpp"
#include "store/pg.hpp"
#include "tokens/tokens.hpp"

namespace dmm::detail {

class HttpServer;
class WorkStreamEngine;

// A registered kind: what the engine runs, and its WorkStream.
struct Kind : KindSpec {
  std::unique_ptr<WorkStream> stream;
  WorkStreamEngine* engine = nullptr;  // owned by `stream`
};

class BucketCore {
 public:
  // Validates `options`, migrates (or checks the schema) and connects to
  // PostgreSQL and NATS; throws the dmm error that names what failed.
  explicit BucketCore(BucketOptions options);

  const BucketOptions& options() const { return options_; }
  spdlog::logger& logger() const { return *logger_; }
  const std::string& worker_id() const { return options_.worker_id; }
  Metrics& metrics() { return metrics_; }
  PgPool& pool() { return pool_; }
  Nats& nats() { return *nats_; }
  NotifyGroups& notify_groups() { return notify_groups_; }

  // The registered kind `name`; InvalidArgument if unknown.
  Kind& kind(const std::string& name);
  // Every registered kind, in name order.
  std::vector<Kind*> kinds();
  WorkStream& register_kind(std::string name, KindOptions options, KindHooks hooks);
  // The kind registered for `type`; InvalidArgument (naming `type_name()`) if none.
  const std::string& kind_of(std::type_index type, std::string (*type_name)());
  void provide(std::type_index type, std::shared_ptr<void> service);
  void* service(std::type_index type, std::string (*type_name)());
  // Starts the HTTP endpoint (once); returns its port.
  int serve_http(const std::string& address, const HttpOptions& options);

  // Publishes the tokens owed after a commit (failures only logged).
  void publish(const std::vector<TokenOwed>& owed) { publish_owed(*nats_, owed); }

 private:
  // Constant after construction.
  const BucketOptions options_;
  const std::shared_ptr<spdlog::logger> logger_;

  Metrics metrics_;              // thread-safe
  PgPool pool_;                  // thread-safe
  std::unique_ptr<Nats> nats_;   // thread-safe; set once in the constructor
  NotifyGroups notify_groups_;   // thread-safe
  HistoryPruner pruner_;         // thread-safe

  std::mutex mu_;                                                // guards the members below
  std::map<std::string, std::unique_ptr<Kind>> kinds_by_name_;  // guarded by mu_; entries never removed
  std::map<std::type_index, std::string> kind_names_;            // guarded by mu_
  std::map<std::type_index, std::shared_ptr<void>> services_;    // guarded by mu_
  // Declared last: stops serving before anything it reads is destroyed.
  std::shared_ptr<HttpServer> http_;  // guarded by mu_; set once by serve_http
};

}  // namespace dmm::detail
