-- dmm's cycle for one batch of :batch matters (pgbench -D batch=N; the
-- batch dmm's run uses) as plain SQL, one autocommit
-- statement each (as dmm runs them): claim by id list (lease, epoch, phase;
-- skips locked rows), then write back "done" (ready, clears the lease, deletes
-- the matter's dmm.kick row). Neither changes an indexed column of the matter
-- table, so with its fillfactor both can be HOT updates, as in dmm since
-- migration 0005. (The rows here have no kick row: the DELETE is the index
-- probe only.)
\set base random(0, 100000 / :batch - 1) * :batch
\set last :base + :batch
UPDATE ceiling.matter m SET
  lease_owner = 'ceiling', lease_until = now() + interval '15 s',
  lease_epoch = m.lease_epoch + 1, phase = 'reconciling', updated_at = now()
  FROM (SELECT id FROM ceiling.matter
         WHERE id = ANY (ARRAY(SELECT generate_series(:base + 1, :last)))
           AND bucket = 'ceiling' AND kind = 'noop' AND (lease_until IS NULL OR lease_until < now())
         ORDER BY id FOR UPDATE SKIP LOCKED) free
 WHERE m.id = free.id
RETURNING m.id, m.identity, m.state::text, m.generation, m.lease_epoch, m.attempts;
WITH kept AS (
  UPDATE ceiling.matter m SET
    materialized_generation = m.generation, phase = 'ready', attempts = 0, last_error = NULL,
    due_at = NULL, lease_owner = NULL, lease_until = NULL,
    lease_epoch = m.lease_epoch + 1, updated_at = now()
   WHERE m.id = ANY (ARRAY(SELECT generate_series(:base + 1, :last))) AND m.lease_owner = 'ceiling'
  RETURNING m.id
)
DELETE FROM ceiling.kick k WHERE k.matter_id = ANY (ARRAY(SELECT id FROM kept));
