// dmm.kick: when the sweeper looks at a matter again, and the sweep itself
// (docs/DESIGN.md, "Protocol (as built)").
#include "store/kicks.hpp"

#include <fmt/format.h>

#include "protocol/vocabulary.hpp"
#include "store/sql.hpp"

namespace dmm::detail {
namespace {

// The sweeper's statement, for the kicks of one class ($5). Of the kicks that
// came due (skipping rows locked by
// a writer, who leaves a token behind), it publishes for the matters that are
// due and not leased, and re-arms their kick a grace ($4) later; a leased
// matter is looked at again when its lease ends, one not yet due when it is;
// the kick of a matter that owes nothing (or is gone) is deleted. The matter
// rows are read, not locked: a writer changing one at the same time waits
// for this statement's kick row lock and then writes its own kick.
// No joins against a table (see "Plans" above): the matter is read by a
// LATERAL probe, the kick rows are changed by `= ANY (ARRAY(...))`, and a
// re-armed kick reads its matter again (same snapshot, same answer) in a
// correlated probe.
constexpr const char* kSweep = R"sql(
WITH due AS (
  SELECT matter_id FROM dmm.kick
   WHERE bucket = $1 AND kind = $2 AND priority = $5 AND kick_at <= now()
   ORDER BY kick_at
   LIMIT $3
   FOR UPDATE SKIP LOCKED
), looked AS (
  SELECT d.matter_id, m.due_at IS NOT NULL AS owed,
         m.due_at <= now() AND (m.lease_until IS NULL OR m.lease_until < now()) AS publish, m.priority
    FROM due d LEFT JOIN LATERAL (
      SELECT m.due_at, m.lease_until, @TOKEN_PRIORITY@ AS priority
        FROM dmm.matter m WHERE m.id = d.matter_id OFFSET 0) m ON true
), dropped AS (
  DELETE FROM dmm.kick
   WHERE matter_id = ANY (ARRAY(SELECT matter_id FROM looked WHERE owed IS NOT TRUE))
  RETURNING matter_id
), published AS (
  -- Every row of `looked` that publishes (its kick row is locked by `due`).
  -- Its lease, if any, ran out: a fair claim's `held` no longer holds.
  UPDATE dmm.kick SET kick_at = now() + $4 * interval '1 millisecond', held = false
   WHERE matter_id = ANY (ARRAY(SELECT matter_id FROM looked WHERE publish IS TRUE))
), later AS (
  UPDATE dmm.kick k SET kick_at = (
    SELECT CASE WHEN m.lease_until >= now() THEN m.lease_until ELSE m.due_at END
      FROM dmm.matter m WHERE m.id = k.matter_id)
   WHERE k.matter_id = ANY (ARRAY(SELECT matter_id FROM looked WHERE owed AND publish IS NOT TRUE))
  RETURNING k.matter_id
)
SELECT matter_id, true, priority FROM looked WHERE publish IS TRUE
UNION ALL
SELECT matter_id, false, 0 FROM later
UNION ALL
SELECT matter_id, false, 0 FROM dropped
)sql";

constexpr const char* kNextKick = R"sql(
SELECT (extract(epoch FROM (min(kick_at) - clock_timestamp())) * 1000)::bigint
  FROM dmm.kick WHERE bucket = $1 AND kind = $2 AND priority = $3
)sql";

}  // namespace

void prepare_kick_statements(pqxx::connection& conn) {
  conn.prepare("dmm_sweep", replace_all(kSweep, "@TOKEN_PRIORITY@", token_priority_sql()));
  conn.prepare("dmm_next_kick", kNextKick);
}

void arm_kicks(pqxx::transaction_base& txn, const std::vector<std::int64_t>& ids, std::chrono::milliseconds grace) {
  if (ids.empty()) return;
  static const std::string sql = replace_all(R"sql(
INSERT INTO dmm.kick AS k (matter_id, bucket, kind, kick_at, priority, fair_key)
SELECT m.id, m.bucket, m.kind,
       CASE WHEN m.lease_until >= now() THEN m.lease_until ELSE now() + $2 * interval '1 millisecond' END,
       @TOKEN_PRIORITY@, m.fair_key
  FROM dmm.matter m WHERE m.id = ANY ($1::bigint[]) AND m.due_at IS NOT NULL
 ORDER BY m.id
ON CONFLICT (matter_id) DO UPDATE SET kick_at = least(k.kick_at, EXCLUDED.kick_at), priority = EXCLUDED.priority,
                                      fair_key = EXCLUDED.fair_key)sql",
                                             "@TOKEN_PRIORITY@", token_priority_sql());
  txn.exec_params(sql, bigint_array(ids), grace.count());
}

void forget_kicks(pqxx::transaction_base& txn, const std::vector<std::int64_t>& ids) {
  if (!ids.empty()) txn.exec_params("DELETE FROM dmm.kick WHERE matter_id = ANY ($1::bigint[])", bigint_array(ids));
}

Swept sweep(pqxx::connection& conn, const std::string& bucket, const std::string& kind, Priority priority,
            int limit, std::chrono::milliseconds grace) {
  pqxx::nontransaction tx(conn);
  Swept swept;
  for (const auto& row :
       tx.exec_prepared("dmm_sweep", bucket, kind, limit, grace.count(), static_cast<int>(index_of(priority)))) {
    ++swept.looked;
    if (row[1].as<bool>()) swept.owed[index_of(priority_of(row[2]))].push_back(row[0].as<std::int64_t>());
  }
  return swept;
}

std::optional<std::int64_t> next_kick_in_ms(pqxx::connection& conn, const std::string& bucket,
                                            const std::string& kind, Priority priority) {
  pqxx::nontransaction tx(conn);
  auto rows = tx.exec_prepared("dmm_next_kick", bucket, kind, static_cast<int>(index_of(priority)));
  if (rows.empty() || rows[0][0].is_null()) return std::nullopt;
  return rows[0][0].as<std::int64_t>();
}

ResyncBatch schedule_unscheduled_resyncs(pqxx::connection& conn, const std::string& bucket, const std::string& kind,
                                         std::chrono::milliseconds period, std::int64_t after_id, int limit) {
  // Rare (once per start of a kind's work() with resync on): planned per
  // call, not prepared. Rows are found by id, in order, so the whole kind is
  // read once over all batches.
  static const std::string sql = fmt::format(R"sql(
WITH batch AS (
  SELECT id FROM dmm.matter WHERE bucket = $1 AND kind = $2 AND id > $3 ORDER BY id LIMIT $5
), picked AS (
  SELECT m.id FROM batch b CROSS JOIN LATERAL (
    SELECT id FROM dmm.matter
     WHERE id = b.id AND phase = '{}' AND due_at IS NULL AND deleted_at IS NULL
       AND (lease_until IS NULL OR lease_until < now())
    OFFSET 0 FOR UPDATE SKIP LOCKED) m
), up AS (
  UPDATE dmm.matter m SET due_at = now() + random() * $4 * interval '1 millisecond'
   WHERE m.id = ANY (ARRAY(SELECT id FROM picked))
  RETURNING m.id, m.due_at, m.fair_key
), kick AS (
  -- A resync is low (store/sql.hpp, token_priority_sql).
  INSERT INTO dmm.kick AS k (matter_id, bucket, kind, kick_at, priority, fair_key)
  SELECT id, $1, $2, due_at, {}, fair_key FROM up ORDER BY id
  ON CONFLICT (matter_id) DO UPDATE SET kick_at = least(k.kick_at, EXCLUDED.kick_at), priority = EXCLUDED.priority,
                                        fair_key = EXCLUDED.fair_key
)
SELECT (SELECT max(id) FROM batch), (SELECT count(*) FROM up))sql",
                                             to_string(Phase::ready), index_of(Priority::low));
  pqxx::nontransaction tx(conn);
  auto rows = tx.exec_params(sql, bucket, kind, after_id, period.count(), limit);
  ResyncBatch out;
  out.scheduled = rows[0][1].as<std::int64_t>();
  if (!rows[0][0].is_null()) out.last_id = rows[0][0].as<std::int64_t>();
  return out;
}

void wake_sweepers(pqxx::transaction_base& txn, const std::string& bucket) {
  txn.exec_params("SELECT pg_notify($1, $2)", std::string(kWakeChannel), bucket);
}

}  // namespace dmm::detail
