-- dmm's cycle for one batch of 256 matters as plain SQL, one autocommit
-- statement each (as dmm runs them): claim by id list (lease, kick_at, epoch,
-- phase; skips locked rows), then write back "done" (ready, clears lease and
-- kick_at). This variant leaves kick_at alone: no indexed column changes, so updates can be HOT.
\set base random(0, 389) * 256
UPDATE ceiling.matter m SET
  lease_owner = 'ceiling', lease_until = now() + interval '15 s',
  lease_epoch = m.lease_epoch + 1, phase = 'reconciling', updated_at = now()
  FROM (SELECT id FROM ceiling.matter
         WHERE id = ANY (ARRAY(SELECT generate_series(:base + 1, :base + 256)))
           AND bucket = 'ceiling' AND kind = 'noop' AND (lease_until IS NULL OR lease_until < now())
         ORDER BY id FOR UPDATE SKIP LOCKED) free
 WHERE m.id = free.id
RETURNING m.id, m.identity, m.state::text, m.generation, m.lease_epoch, m.attempts;
UPDATE ceiling.matter m SET
  materialized_generation = m.generation, phase = 'ready', attempts = 0, last_error = NULL,
  due_at = NULL, lease_owner = NULL, lease_until = NULL,
  lease_epoch = m.lease_epoch + 1, updated_at = now()
 WHERE m.id = ANY (ARRAY(SELECT generate_series(:base + 1, :base + 256))) AND m.lease_owner = 'ceiling';
