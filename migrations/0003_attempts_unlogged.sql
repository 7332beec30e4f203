-- The attempt history is diagnostic: skip the WAL for it (UNLOGGED), which
-- makes recording attempts in the write-back much cheaper. After a crash of
-- PostgreSQL the history is empty (matters themselves are untouched), and it
-- is not replicated to standbys.
-- Append-only: never edit this file after it shipped; add 0004_*.sql instead.
ALTER TABLE dmm.attempt SET UNLOGGED;
