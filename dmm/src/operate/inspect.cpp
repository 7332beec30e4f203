// The administrative actions of dmm/inspect.hpp for operating tools (dmmctl,
// example debug): each one of the store's transitions (store/transitions.hpp),
// the same ones the Bucket API calls. Reads: store/views.cpp; sentences:
// explain.cpp.
#include <fmt/format.h>
#include <pqxx/pqxx>

#include "dmm/errors.hpp"
#include "dmm/inspect.hpp"
#include "store/transitions.hpp"
#include "store/views.hpp"

namespace dmm {
namespace {

detail::Selection selection_of(const InspectQuery& q) { return {q.bucket, q.kind, q.identity, q.phase}; }

}  // namespace

std::optional<MatterDetail> describe(const std::string& postgres, const std::string& bucket, const std::string& kind,
                                     const std::string& identity, int history_limit) {
  auto found = inspect({.postgres = postgres, .bucket = bucket, .kind = kind, .identity = identity, .limit = 1});
  if (found.empty()) return std::nullopt;
  MatterDetail d;
  d.status = std::move(found.front());
  if (history_limit > 0) d.history = attempt_history(postgres, d.status.id, history_limit);
  d.why = explain(d.status, d.history);
  return d;
}

std::int64_t retry_matters(const InspectQuery& q) {
  auto conn = detail::connect_tool(q.postgres);
  pqxx::work tx(*conn);
  // No grace: a tool has no NATS connection, so the sweepers woken at commit
  // send the tokens.
  const auto due = detail::retry_matters(tx, selection_of(q), detail::Kick{});
  tx.commit();
  return static_cast<std::int64_t>(due.size());
}

std::int64_t remove_matters(const InspectQuery& q, bool skip_finalize) {
  auto conn = detail::connect_tool(q.postgres);
  pqxx::work tx(*conn);
  const auto sel = selection_of(q);
  // As Bucket::remove: refused while a live matter outside the selection
  // depends on one inside it (dmm/dependency.hpp).
  if (auto blocked = detail::blocking_dependents(tx, sel, 1); !blocked.empty()) {
    const auto& b = blocked.front();
    throw DependencyError(fmt::format("bucket '{}': cannot remove {} '{}': {} '{}' depends on it; remove it (or "
                                      "include it in the selection) first; nothing was removed",
                                      q.bucket, b.dependency.kind, b.dependency.identity, b.dependent.kind,
                                      b.dependent.identity));
  }
  // Marked, the worker runs the finalizer and deletes the row (at once for a
  // kind without one).
  const auto n = skip_finalize ? detail::delete_matters(tx, sel)
                               : static_cast<std::int64_t>(detail::mark_for_deletion(tx, sel, detail::Kick{}).size());
  tx.commit();
  return n;
}

}  // namespace dmm
