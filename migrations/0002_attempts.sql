-- Attempt history, for "why is this matter not ready?" (dmmctl describe/why).
-- Append-only: never edit this file after it shipped; add 0003_*.sql instead.

-- When the current lease was taken ("leased by worker W since T").
ALTER TABLE dmm.matter ADD COLUMN leased_at timestamptz;
-- Attempts written back so far; attempt k of a matter goes to slot k % limit.
ALTER TABLE dmm.matter ADD COLUMN attempt_seq bigint NOT NULL DEFAULT 0;

-- The last KindOptions::history_limit attempts of each matter, as a ring
-- buffer: write-back upserts slot (seq % limit), so the history is bounded
-- without any delete on the hot path. Rows older than
-- BucketOptions::history_retention are pruned by the sweepers, in batches.
-- No foreign key: a removed matter's history ages out the same way.
CREATE TABLE dmm.attempt (
  matter_id   bigint      NOT NULL,
  slot        integer     NOT NULL,
  seq         bigint      NOT NULL,
  bucket      text        NOT NULL,
  generation  bigint      NOT NULL,
  -- 1 for the first attempt after a change of state or a success, then 2, 3...
  attempt     integer     NOT NULL,
  started_at  timestamptz NOT NULL,
  duration_ms bigint      NOT NULL,
  -- done, requeue, retry, failed, release (stopped before it finished)
  outcome     text        NOT NULL,
  error       text,
  worker      text        NOT NULL,
  PRIMARY KEY (matter_id, slot)
);
