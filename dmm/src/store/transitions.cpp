#include "store/transitions.hpp"

#include <fmt/format.h>

#include "protocol/vocabulary.hpp"
#include "store/kicks.hpp"
#include "store/sql.hpp"

namespace dmm::detail {
namespace {

// The WHERE clause of a Selection: $1 bucket, $2 kind, $3 identity, $4 phase.
constexpr const char* kMatch =
    "m.bucket = $1 AND ($2::text IS NULL OR m.kind = $2) AND ($3::text IS NULL OR m.identity = $3) "
    "AND ($4::text IS NULL OR m.phase = $4)";

pqxx::result exec_on(pqxx::transaction_base& txn, const std::string& sql, const Selection& sel) {
  return txn.exec_params(sql, sel.bucket, sel.kind, sel.identity, sel.phase);
}

std::vector<MadeDue> made_due(pqxx::transaction_base& txn, const pqxx::result& rows, const std::string& bucket,
                              Kick kick) {
  std::vector<MadeDue> out;
  out.reserve(rows.size());
  for (const auto& r : rows)
    out.push_back({r[0].as<std::int64_t>(), kick.grace.count() > 0 && r[1].as<bool>(), priority_of(r[2])});
  arm_kicks(txn, ids_of(rows), kick.grace);
  if (kick.grace.count() == 0 && !rows.empty()) wake_sweepers(txn, bucket);
  return out;
}

}  // namespace

// A retry is a new generation of the same state: an attempt can tell it from
// one repeated after a crash (dmm::Steps starts over only for the former).
std::vector<MadeDue> retry_matters(pqxx::transaction_base& txn, const Selection& sel, Kick kick) {
  static const std::string sql = fmt::format(R"sql(
UPDATE dmm.matter m SET phase = {}, attempts = 0, due_at = now(), updated_at = now(),
       generation = m.generation + 1
WHERE {} AND m.phase IN ('{}', '{}')
RETURNING m.id, m.lease_until IS NULL OR m.lease_until < now(), {})sql",
                                             kPhaseKeepingRemoval, kMatch, to_string(Phase::failed),
                                             to_string(Phase::retrying), token_priority_sql());
  return made_due(txn, exec_on(txn, sql, sel), sel.bucket, kick);
}

std::vector<BlockingEdge> blocking_dependents(pqxx::transaction_base& txn, const Selection& sel, int limit) {
  static const std::string sql = fmt::format(R"sql(
WITH sel AS (SELECT m.kind, m.identity FROM dmm.matter m WHERE {})
SELECT d.dep_kind, d.dep_identity, d.kind, d.identity FROM dmm.dependency d
  JOIN sel ON d.dep_kind = sel.kind AND d.dep_identity = sel.identity
  JOIN dmm.matter dm ON dm.bucket = d.bucket AND dm.kind = d.kind AND dm.identity = d.identity
 WHERE d.bucket = $1 AND dm.deleted_at IS NULL
   AND (d.kind, d.identity) NOT IN (SELECT kind, identity FROM sel)
 ORDER BY 1, 2, 3, 4 LIMIT $5)sql",
                                             kMatch);
  std::vector<BlockingEdge> out;
  for (const auto& r : txn.exec_params(sql, sel.bucket, sel.kind, sel.identity, sel.phase, limit))
    out.push_back({{r[0].as<std::string>(), r[1].as<std::string>()}, {r[2].as<std::string>(), r[3].as<std::string>()}});
  return out;
}

std::int64_t delete_matters(pqxx::transaction_base& txn, const Selection& sel) {
  static const std::string sql = fmt::format(R"sql(
WITH gone AS (DELETE FROM dmm.matter m WHERE {} RETURNING m.id, m.bucket, m.kind, m.identity),
edges AS (DELETE FROM dmm.dependency d USING gone g
           WHERE d.bucket = g.bucket AND d.kind = g.kind AND d.identity = g.identity)
SELECT id FROM gone)sql",
                                             kMatch);
  auto rows = exec_on(txn, sql, sel);
  forget_kicks(txn, ids_of(rows));
  return static_cast<std::int64_t>(rows.size());
}

std::vector<MadeDue> mark_for_deletion(pqxx::transaction_base& txn, const Selection& sel, Kick kick) {
  static const std::string sql = fmt::format(R"sql(
UPDATE dmm.matter m SET
  deleted_at = coalesce(m.deleted_at, now()),
  {}
WHERE {}
RETURNING m.id, m.lease_until IS NULL OR m.lease_until < now(), {})sql",
                                             new_generation_owed_now(fmt::format("'{}'", to_string(Phase::deleting))),
                                             kMatch, token_priority_sql());
  return made_due(txn, exec_on(txn, sql, sel), sel.bucket, kick);
}

std::optional<std::string> read_state(pqxx::transaction_base& txn, const std::string& bucket, const std::string& kind,
                                      std::string_view identity, bool for_update) {
  auto rows = txn.exec_params(std::string("SELECT state::text FROM dmm.matter WHERE bucket = $1 AND kind = $2 AND "
                                          "identity = $3") +
                                  (for_update ? " FOR UPDATE" : ""),
                              bucket, kind, std::string(identity));
  if (rows.empty()) return std::nullopt;
  return rows[0][0].as<std::string>();
}

bool is_ready(pqxx::transaction_base& txn, const std::string& bucket, const Dependency& dep) {
  static const std::string sql = fmt::format(
      "SELECT 1 FROM dmm.matter WHERE bucket = $1 AND kind = $2 AND identity = $3 AND phase = '{}' "
      "AND materialized_generation = generation AND deleted_at IS NULL",
      to_string(Phase::ready));
  return !txn.exec_params(sql, bucket, dep.kind, dep.identity).empty();
}

}  // namespace dmm::detail
