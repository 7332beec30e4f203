// Type-erased entry points into a bucket's engine. The templates in the public
// headers turn typed calls into these; below this line everything works on
// JSON and row ids, not on user types. Not part of the public API.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cxxabi.h>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <typeindex>
#include <vector>

#include "dmm/dependency.hpp"
#include "dmm/options.hpp"
#include "dmm/result.hpp"

namespace pqxx {
class transaction_base;
}

namespace dmm {
class Context;
class WorkStream;
}  // namespace dmm

namespace dmm::detail {

class BucketCore;

// Readable name of T for error messages ("example::MusicPlayer").
template <class T>
std::string type_name() {
  int status = 0;
  char* demangled = abi::__cxa_demangle(typeid(T).name(), nullptr, nullptr, &status);
  std::string name = demangled ? demangled : typeid(T).name();
  std::free(demangled);
  return name;
}

// What the engine needs to know about a registered Materializer type.
struct KindHooks {
  std::type_index type = typeid(void);
  std::string type_name;  // for error messages
  // Decode `state` into the user's type, materialize, and encode the cache the
  // materializer left back into `state`. Throws on failure.
  std::function<Result(nlohmann::json& state, Context&)> materialize;
  // Empty when the type has no finalize(Context&).
  std::function<void(nlohmann::json& state, Context&)> finalize;
  // Empty when the type has no dependencies() const.
  std::function<std::vector<Dependency>(const nlohmann::json& state)> dependencies;
  // Empty when the type has no tenant() const (KindOptions::fairness_key
  // wins over it).
  std::function<std::string(const nlohmann::json& state)> tenant;
};

struct JsonMatter {
  std::string identity;
  nlohmann::json state;
  std::int64_t delay_ms = 0;  // not due before now + this (NotifyOptions)
  Priority priority = Priority::normal;  // NotifyOptions::priority
  std::optional<std::string> fair_key{};  // a fair kind's (KindOptions::fairness_key)
};

WorkStream& register_kind(BucketCore&, std::string name, KindOptions, KindHooks);
// Name of the kind registered for `type`; InvalidArgument if there is none.
// `type_name` is called only to build the error message.
const std::string& kind_of(const BucketCore&, std::type_index type, std::string (*type_name)());
void notify(BucketCore&, const std::string& kind, std::vector<JsonMatter>, const NotifyOptions& = {});
void notify_in(BucketCore&, pqxx::transaction_base&, const std::string& kind, std::vector<JsonMatter>,
               const NotifyOptions& = {});
std::optional<nlohmann::json> get(BucketCore&, const std::string& kind, std::string_view identity);
bool update(BucketCore&, const std::string& kind, std::string_view identity,
            const std::function<void(nlohmann::json&)>& change);
bool remove(BucketCore&, const std::string& kind, std::string_view identity);
bool retry(BucketCore&, const std::string& kind, std::string_view identity);
bool ready(BucketCore&, const Dependency&);
// What Context::checkpoint found.
enum class Checkpoint { saved, superseded };
// Stores `state` of the matter `id` leased under `epoch` at `generation`
// while its attempt runs; superseded if a newer state was notified; throws
// LeaseLost if the lease is no longer this attempt's.
Checkpoint checkpoint(BucketCore&, const std::string& kind, const std::string& identity, std::int64_t id,
                      std::int64_t epoch, std::int64_t generation, const nlohmann::json& state);
// Counts the outcome of a step of dmm::Steps (/metrics dmm_steps_total).
void count_step(BucketCore&, const std::string& kind, std::string_view outcome);
void provide(BucketCore&, std::type_index type, std::shared_ptr<void> service);
void* service(BucketCore&, std::type_index type, std::string (*type_name)());

}  // namespace dmm::detail
