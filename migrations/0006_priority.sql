-- Priority classes (dmm::Priority; docs/DESIGN.md, "Priority").
-- Append-only: never edit this file after it shipped; add 0007_*.sql instead.

-- The class of the latest notify of the matter's state: 0 low, 1 normal,
-- 2 high (protocol/vocabulary.hpp). Its tokens go to that class while the
-- new state has not been tried; a retry, a requeue and a resync go to low.
-- Not indexed: claim and write-back stay in-place (HOT) updates.
ALTER TABLE dmm.matter ADD COLUMN priority smallint NOT NULL DEFAULT 1
  CONSTRAINT matter_priority_known CHECK (priority BETWEEN 0 AND 2);
