#include "store/matters.hpp"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "store/kicks.hpp"
#include "store/sql.hpp"

namespace dmm::detail {
namespace {

// Plans: dmm's connections keep one generic plan per statement (connect_pg),
// made from the statistics of the moment; dmm.kick in particular is often
// empty and vacuumed when a burst arrives. A join of a batch to a table can
// then be planned with the table outside, scanned whole for every row of the
// batch (docs/DESIGN.md, "Hot path": no joins of a batch to a table).
// So no statement here joins a batch to a table: rows are found by
// `id = ANY (ARRAY(...))`, by LATERAL lookups (OFFSET 0 keeps each a probe of
// its own), or by correlated subqueries, and per-row inputs are looked up in
// arrays sorted by id (see kWriteBack). tests/integration/plans_test.cpp
// plans every statement on empty, vacuumed tables and checks that each scan
// of a dmm table has an index condition.
//
// Lock order: every statement that may wait for row locks takes them in id
// order first (the `locked` CTEs, consumed whole by a scalar subquery before
// any row changes), so concurrent batches cannot deadlock. The exception is
// the write-back in a bucket without dependency edges: it locks only its own
// batch, as it updates it, in the order it finds the rows (an index scan for
// `id = ANY (...)` reads them in id order). Should that order ever break,
// PostgreSQL detects the deadlock and the committer retries. A matter's
// dmm.kick row is written only by a statement holding the matter's row lock,
// or by the sweep, which never waits. Claim and sweep skip locked rows, whose
// holder always leaves a token behind (a notify publishes, a write-back or
// release publishes, a transactional notify wakes the sweeper).
//
// dmm.kick (migration 0005) holds when the sweeper should look at a matter
// again; claim and write-back change no indexed column of dmm.matter, so
// PostgreSQL updates those rows in place (HOT). Invariant: a matter with
// due_at set has a dmm.kick row.
//
// A different state bumps the generation and owes work now, or after the
// notify's delay (its per-row `delay_ms`; then the kick is the due time and
// no token is owed now); the same state is a no-op (unless the matter was being removed: a notify cancels that). A
// leased matter keeps its phase, and is looked at no later than its lease's
// end: the holder's write-back sees the new generation and re-arms it. A kick
// only ever moves earlier here (least): an early look is harmless, a late one
// delays a lost token.
// The rows to lock are found one identity at a time (a LATERAL lookup by the
// full unique key, then one by primary key per row, in id order): plans that
// stay index probes whatever the statistics say. `identity IN (SELECT ...)`
// was planned as a join over every row of the bucket while it grew.
constexpr const char* kUpsertTemplate = R"sql(
WITH r AS (
  SELECT * FROM jsonb_to_recordset($3::jsonb)
    AS r(identity text, state jsonb, delay_ms bigint, priority smallint, fair_key text)
), found AS (
  SELECT f.id FROM r CROSS JOIN LATERAL (
    SELECT id FROM dmm.matter WHERE bucket = $1 AND kind = $2 AND identity = r.identity OFFSET 0) f
), locked AS (
  SELECT l.id FROM (SELECT id FROM found ORDER BY id) s
   CROSS JOIN LATERAL (SELECT id FROM dmm.matter WHERE id = s.id FOR UPDATE) l
), up AS (
  INSERT INTO dmm.matter AS m (bucket, kind, identity, state, due_at, priority, fair_key)
  SELECT $1, $2, r.identity, r.state, now() + coalesce(r.delay_ms, 0) * interval '1 millisecond',
         coalesce(r.priority, @NORMAL@), r.fair_key
    FROM r WHERE (SELECT count(*) FROM locked) >= 0
   ORDER BY r.identity
  ON CONFLICT (bucket, kind, identity) DO UPDATE SET
    state = EXCLUDED.state,
    deleted_at = NULL,
    priority = EXCLUDED.priority,
    fair_key = EXCLUDED.fair_key,
    @NEW_GENERATION@
  WHERE m.state IS DISTINCT FROM EXCLUDED.state OR m.deleted_at IS NOT NULL
  RETURNING m.id, m.lease_until >= now() AS leased, m.lease_until, m.due_at > now() AS delayed, m.due_at,
            m.priority, m.fair_key
), kick AS (
  INSERT INTO dmm.kick AS k (matter_id, bucket, kind, kick_at, priority, fair_key)
  SELECT id, $1, $2, CASE WHEN leased THEN lease_until WHEN delayed THEN due_at
                          ELSE now() + $4 * interval '1 millisecond' END, priority, fair_key
    FROM up ORDER BY id
  ON CONFLICT (matter_id) DO UPDATE SET kick_at = least(k.kick_at, EXCLUDED.kick_at), priority = EXCLUDED.priority,
                                        fair_key = EXCLUDED.fair_key
)
SELECT id, leased IS NOT TRUE AND NOT delayed, priority FROM up
)sql";

// The rows are found one id at a time by primary key, and only then checked
// for bucket and kind: with `id = ANY($1) AND bucket = $2 AND kind = $3` a
// plan made while the table looked empty walked the (bucket, kind, identity)
// index over the whole bucket for every claim. Locks are skipped, never waited
// for, so their order does not matter.
constexpr const char* kClaim = R"sql(
WITH free AS (
  SELECT f.id FROM (SELECT DISTINCT unnest($1::bigint[]) AS id) want
   CROSS JOIN LATERAL (
     SELECT id, bucket, kind FROM dmm.matter
      WHERE id = want.id AND due_at <= now() AND (lease_until IS NULL OR lease_until < now())
     OFFSET 0 FOR UPDATE SKIP LOCKED) f
   WHERE f.bucket = $2 AND f.kind = $3
)
UPDATE dmm.matter m SET @LEASE@
WHERE m.id = ANY (ARRAY(SELECT id FROM free))
RETURNING @LEASED@
)sql";

// How both claims lease a matter ($4 owner, $5 ttl ms) and what they return
// of it (claim() reads these columns).
constexpr const char* kLeaseSet = R"sql(
  lease_owner = $4,
  lease_until = now() + $5 * interval '1 millisecond',
  lease_epoch = m.lease_epoch + 1,
  leased_at = now(),
  phase = CASE WHEN m.deleted_at IS NOT NULL THEN 'deleting' ELSE 'reconciling' END,
  updated_at = now())sql";
constexpr const char* kLeasedColumns =
    "m.id, m.identity, m.state::text, m.generation, m.lease_epoch, m.attempts, m.deleted_at IS NOT NULL AS deleting";

// The claim of a kind with global limits or a fairness key: $6 slots
// (global_concurrency; 0: none) and, with $7, the kind's rate (dmm.rate). The
// same lease, given only to as many matters as the limits allow: each takes
// one free slot and one rate token (migration 0007). Slots are locked SKIP
// LOCKED, so claims in other processes take other slots and never wait; a
// slot is free by its own row (held_until), which the lock re-checks. The
// rate row is locked and waited for (claims of the kind take turns for the
// time of a statement), so every claim spends tokens the previous one left.
// Matters are looked at in the order of `want` and only until the budget is
// spent (never more than the tokens named), so a claim while the limits are
// reached locks no matter. When the limits cut the budget, the ids named
// and not leased come back with `waiting` true (some may merely be leased
// elsewhere): the dispatcher keeps their tokens and tries again
// (engine/work_stream.cpp).
// `want` is the ids named ($1) in their order (@WANT@ = kWantNamed), or,
// for a fair kind, the picks of kFairPicks first and then those.
constexpr const char* kClaimBudgetedTemplate = R"sql(
WITH RECURSIVE asked AS (
  SELECT count(DISTINCT id) AS n FROM unnest($1::bigint[]) AS id
),@FAIR_PICKS@
want AS (@WANT@),
slots AS (
  SELECT slot, row_number() OVER (ORDER BY slot) AS n FROM (
    SELECT slot FROM dmm.slot
     WHERE $6 > 0 AND bucket = $2 AND kind = $3 AND slot < $6 AND (held_until IS NULL OR held_until < now())
     ORDER BY slot LIMIT (SELECT n FROM asked)
     FOR UPDATE SKIP LOCKED) s
),
rate AS (
  SELECT @RATE_AVAILABLE@ AS available FROM dmm.rate r WHERE $7 AND r.bucket = $2 AND r.kind = $3 FOR UPDATE
),
budget AS (
  SELECT least(CASE WHEN $6 > 0 THEN (SELECT count(*) FROM slots) ELSE (SELECT n FROM asked) END,
               CASE WHEN $7 THEN coalesce((SELECT floor(available)::bigint FROM rate), 0)
                    ELSE (SELECT n FROM asked) END) AS n
),
free AS (
  SELECT id, ord, row_number() OVER (ORDER BY ord) AS n FROM (
    SELECT f.id, w.ord FROM (SELECT id, ord FROM want ORDER BY ord) w
     CROSS JOIN LATERAL (
       SELECT id, bucket, kind FROM dmm.matter
        WHERE id = w.id AND due_at <= now() AND (lease_until IS NULL OR lease_until < now())
       OFFSET 0 FOR UPDATE SKIP LOCKED) f
     WHERE f.bucket = $2 AND f.kind = $3
     LIMIT (SELECT n FROM budget)) f
),
paired AS (SELECT free.id, slots.slot FROM free LEFT JOIN slots USING (n)),
claimed AS (
  UPDATE dmm.matter m SET @LEASE@
  WHERE m.id = ANY (ARRAY(SELECT id FROM paired))
  RETURNING @LEASED@
),
taken AS (
  UPDATE dmm.slot s SET matter_id = c.id, lease_epoch = c.lease_epoch, held_until = now() + $5 * interval '1 millisecond'
    FROM claimed c JOIN paired p ON p.id = c.id
   WHERE s.bucket = $2 AND s.kind = $3 AND s.slot = p.slot
),
spent AS (
  UPDATE dmm.rate r SET tokens = (SELECT available FROM rate) - (SELECT count(*) FROM claimed),
                        updated_at = greatest(r.updated_at, now())
   WHERE $7 AND r.bucket = $2 AND r.kind = $3 AND (SELECT count(*) FROM claimed) > 0
)@FAIR_HOLD@
SELECT id, identity, state, generation, lease_epoch, attempts, deleting, false, NULL::text FROM claimed
UNION ALL
SELECT id, NULL, NULL, NULL, NULL, NULL, NULL, true, NULL FROM want
 WHERE (SELECT n FROM budget) < (SELECT n FROM asked) AND (SELECT count(*) FROM free) >= (SELECT n FROM budget)
   AND id = ANY ($1::bigint[]) AND id NOT IN (SELECT id FROM claimed)@FAIR_CURSOR@
)sql";

// The ids the tokens name, in their order: the claim of a kind with limits.
constexpr const char* kWantNamed =
    "SELECT id, min(ord) AS ord FROM unnest($1::bigint[]) WITH ORDINALITY AS u(id, ord) GROUP BY id";

// The fair claim ($8 the key after which the rotation goes on, $9 the
// priority class of the tokens): up to as many keys as the tokens name
// matters, in key order after $8 and then from the start (a loose index
// scan, one probe per key), and of each key its first due matters that are
// not leased, by kick_at (docs/DESIGN.md, "Fairness"). They are wanted
// first one of each key, then a second of each, and so on; the ids named
// come after them, for matters that are not in the fair index (a kick of
// before the kind was fair).
constexpr const char* kFairPicks = R"sql(
after_keys AS (
  SELECT 1 AS i, (SELECT fair_key FROM dmm.kick
                   WHERE bucket = $2 AND kind = $3 AND priority = $9 AND fair_key IS NOT NULL AND NOT held
                     AND fair_key > $8 ORDER BY fair_key LIMIT 1) AS key
  UNION ALL
  SELECT a.i + 1, (SELECT fair_key FROM dmm.kick
                    WHERE bucket = $2 AND kind = $3 AND priority = $9 AND fair_key IS NOT NULL AND NOT held
                      AND fair_key > a.key ORDER BY fair_key LIMIT 1)
    FROM after_keys a WHERE a.key IS NOT NULL AND a.i < (SELECT n FROM asked)
),
from_start AS (
  SELECT 1 AS i, (SELECT fair_key FROM dmm.kick
                   WHERE bucket = $2 AND kind = $3 AND priority = $9 AND fair_key IS NOT NULL AND NOT held
                   ORDER BY fair_key LIMIT 1) AS key
  UNION ALL
  SELECT a.i + 1, (SELECT fair_key FROM dmm.kick
                    WHERE bucket = $2 AND kind = $3 AND priority = $9 AND fair_key IS NOT NULL AND NOT held
                      AND fair_key > a.key ORDER BY fair_key LIMIT 1)
    FROM from_start a WHERE a.key IS NOT NULL AND a.key < $8 AND a.i < (SELECT n FROM asked)
),
keys AS (
  SELECT key, row_number() OVER (ORDER BY part, i) AS pos FROM (
    SELECT 0 AS part, i, key FROM after_keys WHERE key IS NOT NULL
    UNION ALL
    SELECT 1, i, key FROM from_start WHERE key IS NOT NULL AND key <= $8
    ORDER BY part, i LIMIT (SELECT n FROM asked)) k
),
per_key AS (
  SELECT 2 * ceil((SELECT n FROM asked)::numeric / greatest(count(*), 1))::bigint + 1 AS n FROM keys
),
picks AS (
  SELECT p.id, p.pos, row_number() OVER (ORDER BY p.rank, p.pos) AS ord FROM (
    SELECT c.matter_id AS id, k.pos, row_number() OVER (PARTITION BY k.pos ORDER BY c.kick_at) AS rank
      FROM keys k CROSS JOIN LATERAL (
        SELECT kk.matter_id, kk.kick_at FROM dmm.kick kk
         CROSS JOIN LATERAL (
           SELECT 1 FROM dmm.matter m
            WHERE m.id = kk.matter_id AND m.due_at <= now() AND (m.lease_until IS NULL OR m.lease_until < now())
           OFFSET 0) due
         WHERE kk.bucket = $2 AND kk.kind = $3 AND kk.priority = $9 AND kk.fair_key = k.key AND NOT kk.held
         ORDER BY kk.kick_at LIMIT (SELECT n FROM per_key)) c) p
),)sql";
constexpr const char* kWantFair = R"sql(
  SELECT id, min(ord) AS ord FROM (
    SELECT id, ord FROM picks
    UNION ALL
    SELECT id, (SELECT count(*) FROM picks) + ord FROM unnest($1::bigint[]) WITH ORDINALITY AS u(id, ord)) w
  GROUP BY id)sql";
// A fair claim's leases hold their kicks out of the fair index until the
// write-back (or the sweeper, for a lease that ran out) lets them go.
constexpr const char* kFairHold = R"sql(,
hold AS (
  UPDATE dmm.kick k SET held = true WHERE k.matter_id = ANY (ARRAY(SELECT id FROM claimed))
))sql";
// The key to go on after in the next claim: that of the last matter leased,
// in the order wanted; with none leased, the last key looked at (their due
// matters are leased elsewhere or wait for a slot), or $8 again when the
// limits left no budget.
constexpr const char* kFairCursor = R"sql(
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, coalesce(
  (SELECT k.key FROM free f JOIN picks p ON p.id = f.id JOIN keys k ON k.pos = p.pos ORDER BY f.ord DESC LIMIT 1),
  CASE WHEN (SELECT n FROM budget) > 0 THEN (SELECT key FROM keys ORDER BY pos DESC LIMIT 1) END, $8))sql";

// The slots of a kind with a global concurrency limit: rows 0..$3-1 exist.
constexpr const char* kEnsureSlots = R"sql(
INSERT INTO dmm.slot (bucket, kind, slot) SELECT $1, $2, g FROM generate_series(0, $3 - 1) AS g
ON CONFLICT DO NOTHING
)sql";

// The rate row of a kind with a rate limit, with this worker's values; a new
// row starts with a full burst, an existing one keeps its tokens (capped).
constexpr const char* kEnsureRate = R"sql(
INSERT INTO dmm.rate (bucket, kind, count, per_ms, burst, tokens, updated_at) VALUES ($1, $2, $3, $4, $5, $5::integer, now())
ON CONFLICT (bucket, kind) DO UPDATE SET count = EXCLUDED.count, per_ms = EXCLUDED.per_ms, burst = EXCLUDED.burst,
  tokens = least(dmm.rate.tokens, EXCLUDED.burst)
)sql";

// Gives back the slots of leases that ended with an outcome ($3 ids, $4
// epochs): a slot of a later lease of the same matter stays held. Each slot
// is found by its holder, one matter at a time (a join planned while
// dmm.slot looked empty scanned the whole index); no other process writes a
// slot that is held, so its ctid holds still.
constexpr const char* kReleaseSlots = R"sql(
UPDATE dmm.slot s SET matter_id = NULL, lease_epoch = NULL, held_until = NULL
 WHERE s.ctid = ANY (ARRAY(
   SELECT h.ctid FROM unnest($3::bigint[], $4::bigint[]) AS o(id, epoch) CROSS JOIN LATERAL (
     SELECT ctid FROM dmm.slot WHERE matter_id = o.id AND lease_epoch = o.epoch AND bucket = $1 AND kind = $2
     OFFSET 0) h))
)sql";

// The one place an attempt's outcome becomes the next stored state.
// Rows whose generation moved on while leased keep their newer state and owe
// work now, whatever the outcome; so do released ones.
// The same statement records each attempt that ran (started_ms set) in the
// matter's history ring (dmm.attempt, slot = seq % $3; $3 = 0 keeps none), so
// history costs no extra round trip and no delete on the hot path.
// It also notifies the dependents (dmm.dependency) of every matter that it
// marks materialized at a new generation: their generation is bumped as by a
// notify of their stored state, so they run again even if they are leased
// right now. Dependents are locked with the batch, in id order.
// The batch travels as parallel arrays sorted by id ($1 ids, $2 epochs, $3
// generations, $4 outcome codes (protocol/vocabulary.hpp), $5 delays, $6 start times (0: never ran),
// $7 durations, $8 attempt numbers), plus $9 {"<id>": {"state": ..., "error":
// ...}} for the outcomes that carry either. The rows are found by
// `id = ANY ($1)`, and each finds its place in the arrays by a binary search
// (width_bucket over the sorted ids), so there is no join between the batch
// and dmm.matter for the planner to get wrong (see "Plans" above); it was
// cheaper than a jsonb object keyed by id (bench/results.md, round 5).
constexpr const char* kWriteBackTemplate = R"sql(
WITH r AS (
  SELECT u.id, u.epoch, u.gen, (@OUTCOMES@)[u.code] AS outcome
    FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::smallint[]) AS u(id, epoch, gen, code)
), edges AS (
  -- Whether the bucket has any dependency edge, probed once: without, the
  -- dependents probes below (three per matter) and the up-front lock are skipped.
  SELECT EXISTS (SELECT 1 FROM dmm.dependency WHERE bucket = $12) AS present
), dependents AS (
  SELECT DISTINCT dm.id
    FROM r
   CROSS JOIN LATERAL (
     SELECT bucket, kind, identity FROM dmm.matter
      WHERE id = r.id AND lease_epoch = r.epoch AND generation = r.gen AND materialized_generation <> r.gen
     OFFSET 0) m
   CROSS JOIN LATERAL (
     SELECT kind, identity FROM dmm.dependency
      WHERE bucket = m.bucket AND dep_kind = m.kind AND dep_identity = m.identity OFFSET 0) d
   CROSS JOIN LATERAL (
     SELECT id FROM dmm.matter WHERE bucket = m.bucket AND kind = d.kind AND identity = d.identity OFFSET 0) dm
   WHERE r.outcome IN ('done', 'requeue') AND (SELECT present FROM edges)
), locked AS (
  -- Only with dependency edges: the dependents must be locked together with
  -- the batch, in id order. Without, the statements below lock the batch's
  -- rows themselves, in id order (an index scan for `id = ANY (...)` reads
  -- the ids sorted; locking every row first cost ~20% of a write-back).
  SELECT id FROM dmm.matter
   WHERE id = ANY (ARRAY(SELECT id FROM r UNION SELECT id FROM dependents)) AND (SELECT present FROM edges)
   ORDER BY id FOR UPDATE
), gone AS (
  DELETE FROM dmm.matter m
   WHERE m.id = ANY (ARRAY(SELECT id FROM r WHERE outcome = 'finalized'))
     AND m.lease_epoch = ($2::bigint[])[width_bucket(m.id, $1::bigint[])]
     AND m.generation = ($3::bigint[])[width_bucket(m.id, $1::bigint[])]
     AND (SELECT count(*) FROM locked) >= 0
  RETURNING m.id, m.kind, m.identity
), gone_edges AS (
  -- One write-back is of one kind, so kind and identity pin the edges down.
  DELETE FROM dmm.dependency d
   WHERE d.bucket = $12 AND d.kind = ANY (ARRAY(SELECT DISTINCT kind FROM gone))
     AND d.identity = ANY (ARRAY(SELECT identity FROM gone))
     AND d.kind || ' ' || d.identity = ANY (ARRAY(SELECT kind || ' ' || identity FROM gone))
), kept AS (
  UPDATE dmm.matter m SET
    (state, generation, materialized_generation, attempts, last_error, phase, due_at, lease_owner, lease_until,
     lease_epoch, attempt_seq, updated_at) = (
    SELECT
      CASE WHEN m.generation = r.gen AND r.outcome IN ('done', 'requeue')
           THEN coalesce(nullif($9::jsonb #> ARRAY[m.id::text, 'state'], 'null'), m.state) ELSE m.state END,
      m.generation + CASE WHEN w.woken THEN 1 ELSE 0 END,
      CASE WHEN m.generation = r.gen AND r.outcome IN ('done', 'requeue')
           THEN r.gen ELSE m.materialized_generation END,
      CASE WHEN m.generation <> r.gen OR w.woken THEN 0
           WHEN r.outcome IN ('retry', 'failed') THEN m.attempts + 1
           WHEN r.outcome = 'release' THEN m.attempts
           ELSE 0 END,
      CASE WHEN m.generation <> r.gen OR w.woken THEN NULL
           WHEN r.outcome IN ('retry', 'failed') THEN $9::jsonb #>> ARRAY[m.id::text, 'error']
           WHEN r.outcome = 'release' THEN m.last_error
           ELSE NULL END,
      CASE WHEN m.generation <> r.gen OR w.woken OR r.outcome = 'release'
             THEN CASE WHEN m.deleted_at IS NOT NULL THEN 'deleting' ELSE 'pending' END
           WHEN r.outcome IN ('done', 'requeue') THEN 'ready'
           WHEN r.outcome = 'retry' THEN CASE WHEN m.deleted_at IS NOT NULL THEN 'deleting' ELSE 'retrying' END
           ELSE 'failed' END,
      CASE WHEN m.generation <> r.gen OR w.woken OR r.outcome = 'release'
             THEN greatest(now(), coalesce(m.due_at, now()))  -- a delayed notify keeps its delay
           WHEN r.outcome IN ('done', 'failed') THEN NULL
           ELSE now() + r.delay_ms * interval '1 millisecond' END,
      NULL,
      NULL::timestamptz,
      m.lease_epoch + 1,
      m.attempt_seq + CASE WHEN r.started_ms > 0 THEN 1 ELSE 0 END,
      now()
    FROM (SELECT width_bucket(m.id, $1::bigint[]) AS p OFFSET 0) x
   CROSS JOIN LATERAL (
     SELECT ($3::bigint[])[x.p] AS gen,
            (@OUTCOMES@)[($4::smallint[])[x.p]] AS outcome,
            ($5::bigint[])[x.p] AS delay_ms, ($6::bigint[])[x.p] AS started_ms) r
   CROSS JOIN LATERAL (SELECT m.id = ANY (ARRAY(SELECT id FROM dependents)) AS woken) w)
  WHERE m.id = ANY ($1::bigint[])
    AND m.lease_epoch = ($2::bigint[])[width_bucket(m.id, $1::bigint[])]
    -- finalized at the generation it saw: deleted by `gone` instead
    AND (($4::smallint[])[width_bucket(m.id, $1::bigint[])] <> @FINALIZED@
         OR m.generation <> ($3::bigint[])[width_bucket(m.id, $1::bigint[])])
    AND (SELECT count(*) FROM locked) >= 0
  RETURNING m.id, m.kind, m.due_at <= now() AS owed_now, m.attempt_seq,
            CASE WHEN m.due_at > now() THEN m.due_at
                 WHEN m.due_at IS NOT NULL THEN now() + $10 * interval '1 millisecond' END AS next_kick,
            @TOKEN_PRIORITY@ AS priority, m.fair_key
), woken AS (
  -- As a notify of the stored state: a leased dependent keeps its phase, and
  -- its holder's write-back sees the new generation.
  UPDATE dmm.matter m SET
    @NEW_GENERATION_KEEP_REMOVAL@
  WHERE m.id = ANY (ARRAY(SELECT id FROM dependents)) AND m.id NOT IN (SELECT id FROM kept)
    AND (SELECT count(*) FROM locked) >= 0
  RETURNING m.id, m.kind, m.lease_until IS NULL OR m.lease_until < now() AS owed_now,
            CASE WHEN m.lease_until >= now() THEN m.lease_until
                 ELSE now() + $10 * interval '1 millisecond' END AS next_kick,
            @TOKEN_PRIORITY@ AS priority, m.fair_key
), kick_set AS (
  -- When the sweeper looks at them next: the retry's due time, or a grace
  -- after now for the tokens published at once, or the lease's end. The
  -- lease this batch ends no longer holds the kick (a fair claim's `held`).
  INSERT INTO dmm.kick AS k (matter_id, bucket, kind, kick_at, priority, fair_key)
  SELECT id, $12, kind, next_kick, priority, fair_key
    FROM (SELECT id, kind, next_kick, priority, fair_key FROM kept WHERE next_kick IS NOT NULL
          UNION ALL SELECT id, kind, next_kick, priority, fair_key FROM woken) s
   ORDER BY id
  ON CONFLICT (matter_id) DO UPDATE SET kick_at = EXCLUDED.kick_at, priority = EXCLUDED.priority,
                                        fair_key = EXCLUDED.fair_key, held = false
), kick_drop AS (
  -- Nothing owed (done, failed) or gone: no token either.
  DELETE FROM dmm.kick k
   WHERE k.matter_id = ANY (ARRAY(SELECT id FROM kept WHERE next_kick IS NULL UNION ALL SELECT id FROM gone))
), history AS (
  INSERT INTO dmm.attempt AS a
    (matter_id, slot, seq, bucket, generation, attempt, started_at, duration_ms, outcome, error, worker)
  SELECT k.id, (k.attempt_seq % $11)::integer, k.attempt_seq, $12, ($3::bigint[])[x.p], ($8::integer[])[x.p],
         to_timestamp(($6::bigint[])[x.p] / 1000.0), ($7::bigint[])[x.p],
         (@OUTCOMES@)[($4::smallint[])[x.p]],
         $9::jsonb #>> ARRAY[k.id::text, 'error'], $13
    FROM kept k
   CROSS JOIN LATERAL (SELECT width_bucket(k.id, $1::bigint[]) AS p OFFSET 0) x
   WHERE $11 > 0 AND ($6::bigint[])[x.p] > 0
   ORDER BY k.id
  ON CONFLICT (matter_id, slot) DO UPDATE SET
    seq = EXCLUDED.seq, bucket = EXCLUDED.bucket, generation = EXCLUDED.generation, attempt = EXCLUDED.attempt,
    started_at = EXCLUDED.started_at, duration_ms = EXCLUDED.duration_ms, outcome = EXCLUDED.outcome,
    error = EXCLUDED.error, worker = EXCLUDED.worker
)
SELECT id, kind, priority FROM kept WHERE owed_now
UNION ALL
SELECT id, kind, priority FROM woken WHERE owed_now
)sql";

// A checkpoint of an attempt that runs: the state is stored if the lease
// ($2 epoch) is still ours and live and the generation ($3) unchanged. The
// row is found by primary key and its lease read under the row lock; what it
// returns tells the three cases apart.
constexpr const char* kCheckpoint = R"sql(
WITH mine AS (
  SELECT id, generation FROM dmm.matter
   WHERE id = $1 AND lease_epoch = $2 AND lease_until >= now() FOR UPDATE
), saved AS (
  UPDATE dmm.matter m SET state = $4::jsonb, updated_at = now()
   WHERE m.id = (SELECT id FROM mine WHERE generation = $3)
  RETURNING m.id
)
SELECT (SELECT count(*) FROM mine), (SELECT count(*) FROM saved)
)sql";

// Renews the leases of $1 (ids, sorted) still held under the epochs $2 (in
// the same order); returns the ids that were not renewed (lost). Each row
// finds its epoch by a binary search in $1 (width_bucket), not by a join.
// @MINE@, @HOLDS_SLOT@ and @SLOTS@ are empty, or the parts below.
constexpr const char* kHeartbeatTemplate = R"sql(
WITH locked AS (SELECT id FROM dmm.matter WHERE id = ANY ($1::bigint[]) ORDER BY id FOR UPDATE),@MINE@
renewed AS (
  UPDATE dmm.matter m SET
    lease_until = now() + $3 * interval '1 millisecond'
   WHERE m.id = ANY ($1::bigint[]) AND m.lease_epoch = ($2::bigint[])[width_bucket(m.id, $1::bigint[])]
     AND (SELECT count(*) FROM locked) >= 0@HOLDS_SLOT@
  RETURNING m.id
)@SLOTS@
SELECT id FROM unnest($1::bigint[]) AS id WHERE id NOT IN (SELECT id FROM renewed)
)sql";

// The heartbeat of a kind with a global limit: a lease is renewed only
// together with the slot it holds, and a lease whose slot is no longer its
// own (its held_until passed and another claim took it) is lost, even if no
// one took the matter: running on would exceed the limit. The slot rows are
// locked one matter at a time (a claim waiting for one re-checks it, and a
// claim never waits for one: SKIP LOCKED).
constexpr const char* kMineSlots = R"sql(
mine AS (
  SELECT h.ctid, h.matter_id FROM unnest($1::bigint[], $2::bigint[]) AS o(id, epoch) CROSS JOIN LATERAL (
    SELECT ctid, matter_id FROM dmm.slot WHERE matter_id = o.id AND lease_epoch = o.epoch OFFSET 0 FOR UPDATE) h
),)sql";
constexpr const char* kHoldsSlot = " AND m.id IN (SELECT matter_id FROM mine)";
constexpr const char* kRenewSlots = R"sql(,
slots AS (
  UPDATE dmm.slot s SET held_until = now() + $3 * interval '1 millisecond'
   WHERE s.ctid = ANY (ARRAY(SELECT ctid FROM mine WHERE matter_id IN (SELECT id FROM renewed)))
))sql";

const std::string& heartbeat_sql(bool with_slots) {
  auto fill = [](const char* mine, const char* holds, const char* renew) {
    return replace_all(replace_all(replace_all(kHeartbeatTemplate, "@MINE@", mine), "@HOLDS_SLOT@", holds),
                       "@SLOTS@", renew);
  };
  static const std::string plain = fill("", "", "");
  static const std::string slots = fill(kMineSlots, kHoldsSlot, kRenewSlots);
  return with_slots ? slots : plain;
}

// The statements with the vocabulary and the shared "new generation, owed
// now" filled in (store/sql.hpp), built once.
const std::string& upsert_sql() {
  static const std::string sql =
      replace_all(replace_all(kUpsertTemplate, "@NEW_GENERATION@", new_generation_owed_now("'pending'", "EXCLUDED.due_at")),
                  "@NORMAL@", std::to_string(index_of(Priority::normal)));
  return sql;
}

std::string claim_filled(const char* claim_template) {
  return replace_all(replace_all(replace_all(claim_template, "@LEASE@", kLeaseSet), "@LEASED@", kLeasedColumns),
                     "@RATE_AVAILABLE@", rate_available_sql());
}

const std::string& claim_sql() {
  static const std::string sql = claim_filled(kClaim);
  return sql;
}

std::string claim_budgeted_sql(bool fair) {
  auto sql = replace_all(kClaimBudgetedTemplate, "@FAIR_PICKS@", fair ? kFairPicks : "");
  sql = replace_all(sql, "@WANT@", fair ? kWantFair : kWantNamed);
  sql = replace_all(sql, "@FAIR_HOLD@", fair ? kFairHold : "");
  return claim_filled(replace_all(sql, "@FAIR_CURSOR@", fair ? kFairCursor : "").c_str());
}

const std::string& write_back_sql() {
  static const std::string sql = [] {
    auto s = replace_all(kWriteBackTemplate, "@OUTCOMES@", outcome_array_sql());
    s = replace_all(s, "@FINALIZED@", std::to_string(outcome_code(OutcomeKind::finalized)));
    s = replace_all(s, "@TOKEN_PRIORITY@", token_priority_sql());
    return replace_all(s, "@NEW_GENERATION_KEEP_REMOVAL@", new_generation_owed_now(kPhaseKeepingRemoval));
  }();
  return sql;
}

}  // namespace

void prepare_matter_statements(pqxx::connection& conn) {
  conn.prepare("dmm_upsert", upsert_sql());
  conn.prepare("dmm_claim", claim_sql());
  conn.prepare("dmm_claim_limited", claim_budgeted_sql(false));
  conn.prepare("dmm_claim_fair", claim_budgeted_sql(true));
  conn.prepare("dmm_release_slots", kReleaseSlots);
  conn.prepare("dmm_write_back", write_back_sql());
  conn.prepare("dmm_checkpoint", kCheckpoint);
  conn.prepare("dmm_heartbeat", heartbeat_sql(false));
  conn.prepare("dmm_heartbeat_with_slots", heartbeat_sql(true));
}

std::vector<TokenOwed> upsert_matters(pqxx::transaction_base& txn, const std::string& bucket,
                                      const std::string& kind, const std::vector<JsonMatter>& matters,
                                      std::chrono::milliseconds grace, bool prepared) {
  auto rows = nlohmann::json::array();
  for (const auto& m : matters) {
    rows.push_back({{"identity", m.identity}, {"state", m.state}});
    if (m.delay_ms > 0) rows.back()["delay_ms"] = m.delay_ms;
    if (m.priority != Priority::normal) rows.back()["priority"] = index_of(m.priority);
    if (m.fair_key) rows.back()["fair_key"] = *m.fair_key;
  }
  std::vector<TokenOwed> owed;
  // The caller's own transaction (notify(txn, obj)) runs on a connection dmm
  // did not prepare.
  auto result = prepared ? txn.exec_prepared("dmm_upsert", bucket, kind, rows.dump(), grace.count())
                         : txn.exec_params(upsert_sql(), bucket, kind, rows.dump(), grace.count());
  for (const auto& row : result)
    if (row[1].as<bool>()) owed.push_back({row[0].as<std::int64_t>(), kind, priority_of(row[2])});
  return owed;
}

Claim claim(pqxx::connection& conn, const std::string& bucket, const std::string& kind,
            const std::vector<std::int64_t>& ids, const std::string& owner, std::chrono::milliseconds ttl,
            const ClaimLimits& limits, FairTurn* fair) {
  pqxx::nontransaction tx(conn);
  const auto id_list = bigint_array(ids);
  auto rows = fair ? tx.exec_prepared("dmm_claim_fair", id_list, bucket, kind, owner, ttl.count(), limits.slots,
                                      limits.rate, fair->after, static_cast<int>(index_of(fair->priority)))
              : limits.any()
                  ? tx.exec_prepared("dmm_claim_limited", id_list, bucket, kind, owner, ttl.count(), limits.slots,
                                     limits.rate)
                  : tx.exec_prepared("dmm_claim", id_list, bucket, kind, owner, ttl.count());
  Claim result;
  result.claimed.reserve(rows.size());
  for (const auto& row : rows) {
    if (row[0].is_null()) {  // the fair claim's next key
      if (fair && !row[8].is_null()) fair->after = row[8].as<std::string>();
      continue;
    }
    if (row.size() > 7 && row[7].as<bool>()) {
      result.waiting.push_back(row[0].as<std::int64_t>());
      continue;
    }
    result.claimed.push_back(Claimed{row[0].as<std::int64_t>(), row[1].as<std::string>(), row[2].as<std::string>(),
                                     row[3].as<std::int64_t>(), row[4].as<std::int64_t>(), row[5].as<int>(),
                                     row[6].as<bool>()});
  }
  return result;
}

void ensure_limits(pqxx::connection& conn, const std::string& bucket, const std::string& kind, int slots,
                   const RateLimit& rate) {
  pqxx::nontransaction tx(conn);
  if (slots > 0) tx.exec_params(kEnsureSlots, bucket, kind, slots);
  if (rate.count > 0)
    tx.exec_params(kEnsureRate, bucket, kind, rate.count, static_cast<std::int64_t>(rate.per.count()), rate.burst);
}

void release_slots(pqxx::connection& conn, const std::string& bucket, const std::string& kind,
                   const std::vector<Outcome>& outcomes) {
  std::vector<std::int64_t> ids, epochs;
  ids.reserve(outcomes.size());
  epochs.reserve(outcomes.size());
  for (const auto& o : outcomes) {
    ids.push_back(o.id);
    epochs.push_back(o.epoch);
  }
  pqxx::nontransaction(conn).exec_prepared("dmm_release_slots", bucket, kind, bigint_array(ids), bigint_array(epochs));
}

std::vector<TokenOwed> write_back(pqxx::connection& conn, const std::vector<Outcome>& outcomes,
                                     std::chrono::milliseconds grace, const std::string& wake_payload,
                                     const HistoryWrite& history) {
  // Sorted by id, one outcome per matter (the arrays are binary-searched).
  // Of two outcomes of one matter (an attempt abandoned when its lease was
  // lost, and the next one, written back together) only the newer lease can
  // still match: keep that one.
  std::vector<const Outcome*> batch;
  batch.reserve(outcomes.size());
  for (const auto& o : outcomes) batch.push_back(&o);
  std::sort(batch.begin(), batch.end(), [](const Outcome* a, const Outcome* b) {
    return a->id != b->id ? a->id < b->id : a->epoch > b->epoch;
  });
  const auto same_matter = [](const Outcome* a, const Outcome* b) { return a->id == b->id; };
  batch.erase(std::unique(batch.begin(), batch.end(), same_matter), batch.end());
  std::vector<std::int64_t> ids, epochs, gens, codes, delays, started, durations, attempts;
  auto extra = nlohmann::json::object();
  for (const auto* o : batch) {
    ids.push_back(o->id);
    epochs.push_back(o->epoch);
    gens.push_back(o->generation);
    codes.push_back(outcome_code(o->kind));
    delays.push_back(o->delay_ms);
    started.push_back(o->started_ms);
    durations.push_back(o->duration_ms);
    attempts.push_back(o->attempt);
    if (o->state) extra[std::to_string(o->id)]["state"] = *o->state;
    if (!o->error.empty()) extra[std::to_string(o->id)]["error"] = o->error;
  }
  pqxx::nontransaction tx(conn);
  std::vector<TokenOwed> owed;
  for (const auto& row : tx.exec_prepared(
           "dmm_write_back", bigint_array(ids), bigint_array(epochs), bigint_array(gens), bigint_array(codes),
           bigint_array(delays), bigint_array(started), bigint_array(durations), bigint_array(attempts),
           extra.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), grace.count(), history.limit,
           history.bucket, history.worker))
    owed.push_back({row[0].as<std::int64_t>(), row[1].as<std::string>(), priority_of(row[2])});
  // A sweeper sleeping until the earliest kick_at it knew of must learn of the
  // retries and requeues just scheduled, or a short backoff becomes a long one.
  const bool scheduled = std::any_of(outcomes.begin(), outcomes.end(), [](const Outcome& o) {
    return o.kind == OutcomeKind::retry || o.kind == OutcomeKind::requeue;
  });
  if (scheduled) wake_sweepers(tx, wake_payload);
  return owed;
}

CheckpointResult checkpoint(pqxx::connection& conn, std::int64_t id, std::int64_t epoch, std::int64_t generation,
                            const nlohmann::json& state) {
  pqxx::nontransaction tx(conn);
  const auto row = tx.exec_prepared1("dmm_checkpoint", id, epoch, generation,
                                     state.dump(-1, ' ', false, nlohmann::json::error_handler_t::strict));
  if (row[0].as<int>() == 0) return CheckpointResult::lease_lost;
  return row[1].as<int>() == 1 ? CheckpointResult::saved : CheckpointResult::superseded;
}

std::vector<std::int64_t> heartbeat(pqxx::connection& conn, const std::vector<std::int64_t>& ids,
                                    const std::vector<std::int64_t>& epochs, std::chrono::milliseconds ttl,
                                    bool with_slots) {
  std::vector<std::pair<std::int64_t, std::int64_t>> held;  // (id, epoch), sorted by id
  for (std::size_t i = 0; i < ids.size(); ++i) held.emplace_back(ids[i], epochs[i]);
  std::sort(held.begin(), held.end());
  std::vector<std::int64_t> sorted_ids, sorted_epochs;
  for (const auto& [id, epoch] : held) sorted_ids.push_back(id), sorted_epochs.push_back(epoch);
  pqxx::nontransaction tx(conn);
  return ids_of(tx.exec_prepared(with_slots ? "dmm_heartbeat_with_slots" : "dmm_heartbeat", bigint_array(sorted_ids),
                                 bigint_array(sorted_epochs), ttl.count()));
}

}  // namespace dmm::detail
