-- Global limits of a kind across processes: concurrency slots
-- (KindOptions::global_concurrency; docs/DESIGN.md, "Global concurrency") and
-- rate limits (KindOptions::rate_limit; docs/DESIGN.md, "Rate limit").
-- Append-only: never edit this file after it shipped; add 0008_*.sql instead.

-- Slot `slot` of a kind is held while held_until is in the future, by the
-- lease `lease_epoch` of matter `matter_id`. The claim takes free slots
-- (SKIP LOCKED) with the matters it leases, the heartbeat renews held_until
-- with the lease, the write-back gives the slot back; a holder that died
-- leaves held_until to pass. A worker creates the rows 0..N-1 of its kind.
-- Whether a slot is free is read from its own row only, so that a claim that
-- waited for a slot's lock re-checks the row it locked (EvalPlanQual), never
-- a matter row of an older snapshot.
CREATE TABLE dmm.slot (
  bucket      text NOT NULL,
  kind        text NOT NULL,
  slot        integer NOT NULL CONSTRAINT slot_number CHECK (slot >= 0),
  matter_id   bigint,
  lease_epoch bigint,
  held_until  timestamptz,
  PRIMARY KEY (bucket, kind, slot)
);
-- The heartbeat and the write-back find a matter's slot by the matter.
CREATE INDEX slot_holder ON dmm.slot (matter_id) WHERE matter_id IS NOT NULL;

-- The rate limit of a kind (KindOptions::rate_limit), a token bucket: at most
-- `count` starts per `per_ms`, and up to `burst` at once after a quiet spell.
-- `tokens` were available at `updated_at`; they grow by count per per_ms, up
-- to burst. The claim locks the row (briefly: claims of the kind take turns),
-- spends a token per matter it leases and writes the rest back. Workers write
-- count, per_ms and burst when they start (the last one's are in force).
CREATE TABLE dmm.rate (
  bucket     text NOT NULL,
  kind       text NOT NULL,
  count      integer NOT NULL CONSTRAINT rate_count CHECK (count > 0),
  per_ms     bigint NOT NULL CONSTRAINT rate_per CHECK (per_ms > 0),
  burst      integer NOT NULL CONSTRAINT rate_burst CHECK (burst > 0),
  tokens     double precision NOT NULL,
  updated_at timestamptz NOT NULL,
  PRIMARY KEY (bucket, kind)
);
