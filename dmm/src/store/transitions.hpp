// The operator transitions of a matter's stored state, each written once and
// called by both the Bucket API (bucket/api.cpp) and dmmctl (operate/): run
// again (retry), remove (at once, or marked for deletion so the worker runs
// the finalizer), and the single-matter reads the API needs. The hot path
// (notify upsert, claim, write-back) is in store/matters.hpp.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <pqxx/pqxx>
#include <string>
#include <string_view>
#include <vector>

#include "dmm/dependency.hpp"
#include "dmm/options.hpp"

namespace dmm::detail {

// Which matters of a bucket a transition applies to; an unset field matches
// every value.
struct Selection {
  std::string bucket;
  std::optional<std::string> kind;
  std::optional<std::string> identity;
  std::optional<std::string> phase;
};

// A matter a transition made due: its token is owed after commit unless it
// is leased (its holder's write-back sees the change), in class `priority`.
struct MadeDue {
  std::int64_t id = 0;
  bool owed_now = false;
  Priority priority = Priority::normal;
};

// How the sweepers learn of matters made due: with a grace, the caller
// publishes the tokens owed after commit and the sweeper looks again after
// the grace; with none (a tool that has no NATS connection), the sweepers
// are woken at commit and publish them.
struct Kick {
  std::chrono::milliseconds grace{0};
};

// `failed` or `retrying` matters of the selection: attempts reset, due now.
std::vector<MadeDue> retry_matters(pqxx::transaction_base& txn, const Selection& sel, Kick kick);

// A live matter outside the selection that depends on one inside it, which
// makes the removal of the selection refused (docs/DESIGN.md, "Dependencies
// between matters").
struct BlockingEdge {
  Dependency dependency;  // the matter in the selection
  Dependency dependent;   // the one outside that depends on it
};
std::vector<BlockingEdge> blocking_dependents(pqxx::transaction_base& txn, const Selection& sel, int limit);

// Removes the selection's matters at once: rows, kicks and dependency edges.
// Returns how many.
std::int64_t delete_matters(pqxx::transaction_base& txn, const Selection& sel);

// Marks the selection's matters for deletion, as a notify of "gone": a new
// generation that owes a finalize (the worker deletes the row after it).
std::vector<MadeDue> mark_for_deletion(pqxx::transaction_base& txn, const Selection& sel, Kick kick);

// The stored state of one matter as JSON text; `for_update` locks the row
// until the transaction ends.
std::optional<std::string> read_state(pqxx::transaction_base& txn, const std::string& bucket, const std::string& kind,
                                      std::string_view identity, bool for_update = false);

// Whether the matter exists, is not being removed and its latest state is
// materialized.
bool is_ready(pqxx::transaction_base& txn, const std::string& bucket, const Dependency& dep);

}  // namespace dmm::detail
