-- Priority classes (dmm::Priority; docs/DESIGN.md, "Priority").
-- Append-only: never edit this file after it shipped; add 0007_*.sql instead.

-- The class of the latest notify of the matter's state: 0 low, 1 normal,
-- 2 high (protocol/vocabulary.hpp). Its tokens go to that class while the
-- new state has not been tried; a retry, a requeue and a resync go to low.
-- Not indexed: claim and write-back stay in-place (HOT) updates.
ALTER TABLE dmm.matter ADD COLUMN priority smallint NOT NULL DEFAULT 1
  CONSTRAINT matter_priority_known CHECK (priority BETWEEN 0 AND 2);

-- The sweeper sweeps each class on its own, highest first, so that a kick of
-- a high matter (a transactional notify, a lost token) is not found behind a
-- normal backlog's kicks. The class of a kick is the one its token goes to.
ALTER TABLE dmm.kick ADD COLUMN priority smallint NOT NULL DEFAULT 1;
DROP INDEX dmm.kick_due;
CREATE INDEX kick_due ON dmm.kick (bucket, kind, priority, kick_at);
