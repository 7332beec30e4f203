-- The SQL ceiling's table: shaped like dmm.matter (same columns, defaults and
-- indexes, through LIKE ... INCLUDING ALL), 100k ready rows of one kind.
DROP SCHEMA IF EXISTS ceiling CASCADE;
CREATE SCHEMA ceiling;
CREATE TABLE ceiling.matter (LIKE dmm.matter INCLUDING ALL);
INSERT INTO ceiling.matter (id, bucket, kind, identity, state, generation, materialized_generation, phase)
SELECT g, 'ceiling', 'noop', 'm-' || g, jsonb_build_object('id', 'm-' || g, 't_ns', 0), 1, 1, 'ready'
  FROM generate_series(1, 100000) g;
VACUUM ANALYZE ceiling.matter;
