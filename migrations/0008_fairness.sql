-- Fairness keys (KindOptions::fairness_key or a Materializer's tenant();
-- docs/DESIGN.md, "Fairness"): claims of a fair kind rotate across keys.
-- Append-only: never edit this file after it shipped; add 0009_*.sql instead.

-- The key of a matter of a fair kind, from its latest notify; NULL for other
-- kinds. Not indexed, so claim and write-back stay in-place (HOT) updates.
ALTER TABLE dmm.matter ADD COLUMN fair_key text;

-- A kick row carries its matter's key, and `held` while a fair claim holds
-- the matter's lease: the fair claim picks due matters key by key from the
-- index below, which holds only the kicks of fair matters that are not held.
-- The write-back and the sweeper (a lease that ran out) clear `held`.
ALTER TABLE dmm.kick ADD COLUMN fair_key text, ADD COLUMN held boolean NOT NULL DEFAULT false;
CREATE INDEX kick_fair ON dmm.kick (bucket, kind, priority, fair_key, kick_at)
  WHERE fair_key IS NOT NULL AND NOT held;
