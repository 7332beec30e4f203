-- The SQL ceiling's tables: shaped like dmm.matter and dmm.kick (same columns,
-- defaults and indexes, through LIKE ... INCLUDING ALL; dmm.matter's
-- fillfactor), 100k ready rows of one kind.
DROP SCHEMA IF EXISTS ceiling CASCADE;
CREATE SCHEMA ceiling;
CREATE TABLE ceiling.matter (LIKE dmm.matter INCLUDING ALL) WITH (fillfactor = 50);
CREATE TABLE ceiling.kick (LIKE dmm.kick INCLUDING ALL);
INSERT INTO ceiling.matter (id, bucket, kind, identity, state, generation, materialized_generation, phase)
SELECT g, 'ceiling', 'noop', 'm-' || g, jsonb_build_object('id', 'm-' || g, 't_ns', 0), 1, 1, 'ready'
  FROM generate_series(1, 100000) g;
VACUUM ANALYZE ceiling.matter;
