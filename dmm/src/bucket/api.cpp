// The type-erased API entry points (dmm/detail/core.hpp) behind Bucket and
// Context: validate, call the store's transition, publish the tokens owed
// after commit.
#include <fmt/format.h>
#include <map>

#include "bucket/bucket_core.hpp"
#include "bucket/options.hpp"
#include "dmm/errors.hpp"
#include "protocol/names.hpp"
#include "store/dependencies.hpp"
#include "store/errors.hpp"
#include "store/kicks.hpp"
#include "store/matters.hpp"
#include "store/transitions.hpp"

namespace dmm::detail {
namespace {

// The fairness key of a matter of a fair kind, validated (docs/DESIGN.md,
// "Fairness"); nullopt for other kinds.
std::optional<std::string> fair_key_of(const Kind& k, const JsonMatter& m) {
  const auto& key_of = k.options.fairness_key ? k.options.fairness_key : k.hooks.tenant;
  if (!key_of) return std::nullopt;
  std::string key;
  try {
    key = key_of(m.state);
  } catch (const std::exception& e) {
    throw InvalidArgument(fmt::format("kind '{}' identity '{}': its fairness key could not be read: {}; "
                                      "KindOptions::fairness_key (or the type's tenant()) must not throw",
                                      k.name, m.identity.substr(0, 64), e.what()));
  }
  validate_fair_key(k.name, m.identity, key);
  return key;
}

// Validates each notified matter and gives it the delay and priority
// `options` ask for, and its fairness key.
void prepare_notified(const BucketCore& core, const Kind& k, std::vector<JsonMatter>& matters,
                      const NotifyOptions& options) {
  const auto& kind = k.name;
  const auto delay_ms = notify_delay_ms(options, kind);
  validate_priority(options, kind);
  for (auto& m : matters) {
    validate_identity(kind, m.identity);
    check_state_size(m.state, core.options().max_state_bytes, StateSource::notify, kind, m.identity);
    m.delay_ms = delay_ms;
    m.priority = options.priority;
    m.fair_key = fair_key_of(k, m);
  }
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
  auto cycle = store_dependencies(tx, core.options().name, kind, deps);
  if (!cycle) return;
  std::string path;
  for (const auto& step : *cycle) path += (path.empty() ? "" : " -> ") + describe_matter(step);
  throw DependencyError(fmt::format("bucket '{}': dependency cycle {}; a matter cannot depend on itself, directly or "
                                    "not; nothing was stored",
                                    core.options().name, path));
}

std::string about(const std::string& call, const std::string& kind, std::string_view identity) {
  return fmt::format("{} of kind '{}' identity '{}'", call, kind, identity.substr(0, 64));
}

// Publishes the tokens owed for matters a transition made due.
void publish_due(BucketCore& core, const std::string& kind, const std::vector<MadeDue>& due) {
  std::vector<TokenOwed> owed;
  for (const auto& d : due)
    if (d.owed_now) owed.push_back({d.id, kind, d.priority});
  core.publish(owed);
}

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
  // committed on its own, saves the BEGIN and COMMIT round trips
  // (docs/DESIGN.md, "Protocol (as built)"). Repeating it is harmless.
  auto owed = in_postgres(
      core.pool(), core.options().name, what,
      [&](pqxx::connection& conn) {
        if (deps.empty()) {
          pqxx::nontransaction tx(conn);
          return upsert_matters(tx, core.options().name, kind, chunk, core.options().token_grace);
        }
        pqxx::work tx(conn);
        auto ids = upsert_matters(tx, core.options().name, kind, chunk, core.options().token_grace);
        record_dependencies(tx, core, kind, deps);
        tx.commit();
        return ids;
      },
      deps.empty());
  core.publish(owed);
}

}  // namespace

void notify(BucketCore& core, const std::string& kind, std::vector<JsonMatter> matters,
            const NotifyOptions& options) {
  const auto& k = core.kind(kind);
  prepare_notified(core, k, matters, options);
  if (matters.size() == 1 && !k.hooks.dependencies) {
    // Written together with concurrent notifies of the kind (notify_group.hpp).
    core.notify_groups().notify(kind, std::move(matters.front()), [&](std::vector<JsonMatter>& batch) {
      store_notifies(core, kind, batch, {},
                     batch.size() == 1 ? about("notify", kind, batch.front().identity)
                                       : fmt::format("notify of {} matters of kind '{}' (concurrent notify calls, "
                                                     "written together)",
                                                     batch.size(), kind));
      if (batch.size() > 1)
        core.metrics().kind(kind).notifies_grouped.fetch_add(batch.size(), std::memory_order_relaxed);
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
               std::vector<JsonMatter> matters, const NotifyOptions& options) {
  const auto& k = core.kind(kind);
  prepare_notified(core, k, matters, options);
  for_each_chunk(last_state_wins(std::move(matters)), [&](const std::vector<JsonMatter>& chunk, std::size_t) {
    // Kicked now: a sweeper woken by the NOTIFY at commit publishes the tokens.
    upsert_matters(txn, core.options().name, kind, chunk, std::chrono::milliseconds(0), false);
    record_dependencies(txn, core, kind, dependencies_of(k, chunk));
  });
  wake_sweepers(txn, core.options().name);
}

std::optional<nlohmann::json> get(BucketCore& core, const std::string& kind, std::string_view identity) {
  core.kind(kind);
  validate_identity(kind, identity);
  auto state = in_postgres(core.pool(), core.options().name, about("get", kind, identity), [&](pqxx::connection& conn) {
    pqxx::nontransaction tx(conn);
    return read_state(tx, core.options().name, kind, identity);
  });
  if (!state) return std::nullopt;
  return nlohmann::json::parse(*state);
}

bool update(BucketCore& core, const std::string& kind, std::string_view identity,
            const std::function<void(nlohmann::json&)>& change) {
  const auto& k = core.kind(kind);
  validate_identity(kind, identity);
  std::optional<std::vector<TokenOwed>> owed = in_postgres(
      core.pool(), core.options().name, about("update", kind, identity), [&](pqxx::connection& conn) -> std::optional<std::vector<TokenOwed>> {
        pqxx::work tx(conn);
        auto stored = read_state(tx, core.options().name, kind, identity, true);
        if (!stored) return std::nullopt;
        JsonMatter m{std::string(identity), nlohmann::json::parse(*stored)};
        change(m.state);
        check_state_size(m.state, core.options().max_state_bytes, StateSource::notify, kind, m.identity);
        m.fair_key = fair_key_of(k, m);
        std::vector<JsonMatter> one;
        one.push_back(std::move(m));
        const auto deps = dependencies_of(k, one);
        auto ids = upsert_matters(tx, core.options().name, kind, one, core.options().token_grace);
        record_dependencies(tx, core, kind, deps);
        tx.commit();
        return ids;
      });
  if (!owed) return false;
  core.publish(*owed);
  return true;
}

bool remove(BucketCore& core, const std::string& kind, std::string_view identity) {
  auto& k = core.kind(kind);
  validate_identity(kind, identity);
  const bool finalize = static_cast<bool>(k.hooks.finalize);
  const Selection sel{core.options().name, kind, std::string(identity), std::nullopt};
  auto due = in_postgres(core.pool(), core.options().name, about("remove", kind, identity),
                         [&](pqxx::connection& conn) -> std::optional<std::vector<MadeDue>> {
    pqxx::work tx(conn);
    if (!read_state(tx, core.options().name, kind, identity, true)) return std::nullopt;
    if (auto blocked = blocking_dependents(tx, sel, 6); !blocked.empty()) {
      std::string names;
      for (std::size_t i = 0; i < std::min<std::size_t>(blocked.size(), 5); ++i)
        names += (i ? ", " : "") +
                 fmt::format("{} '{}'", blocked[i].dependent.kind, blocked[i].dependent.identity.substr(0, 200));
      if (blocked.size() > 5) names += ", ...";
      throw DependencyError(fmt::format("bucket '{}': cannot remove {} '{}': {} depend(s) on it; remove them, or "
                                        "change their dependencies, first (nothing was removed)",
                                        core.options().name, kind, identity.substr(0, 200), names));
    }
    // With a finalizer: a new generation that owes the finalize.
    std::vector<MadeDue> out;
    if (finalize)
      out = mark_for_deletion(tx, sel, Kick{core.options().token_grace});
    else
      delete_matters(tx, sel);
    tx.commit();
    return out;
  });
  if (!due) return false;
  publish_due(core, kind, *due);
  return true;
}

bool retry(BucketCore& core, const std::string& kind, std::string_view identity) {
  core.kind(kind);
  validate_identity(kind, identity);
  const Selection sel{core.options().name, kind, std::string(identity), std::nullopt};
  auto due = in_postgres(core.pool(), core.options().name, about("retry", kind, identity), [&](pqxx::connection& conn) {
    pqxx::work tx(conn);
    auto out = retry_matters(tx, sel, Kick{core.options().token_grace});
    tx.commit();
    return out;
  });
  if (due.empty()) return false;
  publish_due(core, kind, due);
  return true;
}

Checkpoint checkpoint(BucketCore& core, const std::string& kind, const std::string& identity, std::int64_t id,
                      std::int64_t epoch, std::int64_t generation, const nlohmann::json& state) {
  check_state_size(state, core.options().max_state_bytes, StateSource::notify, kind, identity);
  const auto found = in_postgres(core.pool(), core.options().name, about("checkpoint", kind, identity),
                                 [&](pqxx::connection& conn) { return detail::checkpoint(conn, id, epoch, generation, state); });
  if (found == CheckpointResult::lease_lost)
    throw LeaseLost(fmt::format("{}: this attempt no longer holds the lease (it ran out: a stall, or no heartbeat "
                                "reached PostgreSQL); nothing was stored, and the attempt should return",
                                about("checkpoint", kind, identity)));
  return found == CheckpointResult::saved ? Checkpoint::saved : Checkpoint::superseded;
}

void count_step(BucketCore& core, const std::string& kind, std::string_view outcome) {
  core.metrics().kind(kind).count_step(outcome);
}

bool ready(BucketCore& core, const Dependency& dep) {
  validate_name("kind", dep.kind);
  validate_identity(dep.kind, dep.identity);
  return in_postgres(core.pool(), core.options().name, about("ready", dep.kind, dep.identity),
                     [&](pqxx::connection& conn) {
                       pqxx::nontransaction tx(conn);
                       return is_ready(tx, core.options().name, dep);
                     });
}



}  // namespace dmm::detail
