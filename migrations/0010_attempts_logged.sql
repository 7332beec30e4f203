-- The attempt history is WAL-logged again (undoing 0003): users ask "why is
-- this matter not ready?" most after an incident, and an UNLOGGED table is
-- emptied by a crash of PostgreSQL, is empty on a promoted standby and cannot
-- be read on a hot standby. What it costs: docs/DESIGN.md, "Attempt history".
-- SET LOGGED writes the whole table to the WAL once, under an exclusive lock
-- (write-backs wait meanwhile; its time grows with the table).
-- Append-only: never edit this file after it shipped; add 0011_*.sql instead.
ALTER TABLE dmm.attempt SET LOGGED;
