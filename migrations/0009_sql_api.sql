-- The SQL API (docs/SQL.md): dmm.notify, dmm.notify_many and dmm.remove, so
-- that any client, any language and any trigger can notify in its own
-- transaction, and the registry of kinds (dmm.kind) they check against.
-- Append-only: never edit this file after it shipped; add 0010_*.sql instead.
--
-- DUPLICATED ON PURPOSE: dmm.upsert_rows below is the C++ notify upsert
-- (kUpsertTemplate in dmm/src/store/matters.cpp, with
-- new_generation_owed_now in store/sql.cpp, kicked at now() as notify_in in
-- bucket/api.cpp does), and dmm.remove is Bucket::remove (bucket/api.cpp,
-- mark_for_deletion / delete_matters in store/transitions.cpp, arm_kicks in
-- store/kicks.cpp). The SQL side cannot call C++. A change to either side
-- goes into a new migration that replaces these functions:
-- tests/integration/sql_api_test.cpp runs the same sequence of notifies
-- through Bucket::notify(txn, ...) and dmm.notify and compares the stored
-- rows, so the two cannot drift unnoticed. The priority numbers (0 low,
-- 1 normal, 2 high) are protocol/vocabulary.hpp's, checked by that test too.

-- One row per kind a process registered (Bucket::register_kind writes it,
-- an upsert: the latest registration's values win). A bucket is known to
-- the SQL side once it has a kind here.
CREATE TABLE dmm.kind (
  bucket           text        NOT NULL,
  kind             text        NOT NULL,
  -- BucketOptions::max_state_bytes of the registering process.
  max_state_bytes  bigint      NOT NULL,
  -- The type has finalize(): dmm.remove marks the matter deleting instead
  -- of deleting it.
  has_finalize     boolean     NOT NULL,
  -- The type declares dependencies(): the SQL side cannot compute them, so
  -- dmm.notify refuses such a kind.
  has_dependencies boolean     NOT NULL,
  -- The kind has a fairness key (KindOptions::fairness_key or tenant()).
  fair             boolean     NOT NULL,
  registered_by    text        NOT NULL,
  registered_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (bucket, kind)
);

-- A bucket or kind name: 1-64 of [A-Za-z0-9_-] (protocol/names.cpp).
CREATE FUNCTION dmm.check_name(p_what text, p_name text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $fn$
BEGIN
  IF p_name IS NULL THEN
    RAISE EXCEPTION 'dmm: % name is NULL', p_what
      USING ERRCODE = '22004', HINT = format('pass the %s name: 1-64 characters from [A-Za-z0-9_-]', p_what);
  END IF;
  IF p_name !~ '^[A-Za-z0-9_-]{1,64}$' THEN
    RAISE EXCEPTION 'dmm: invalid % name ''%''', p_what, left(p_name, 64)
      USING ERRCODE = '22023', HINT = format('use 1-64 characters from [A-Za-z0-9_-] (the names of Bucket::open '
                                             'and register_kind)');
  END IF;
END
$fn$;

-- Text that must be UTF-8. A UTF8 database holds nothing else in text (and
-- never NUL); another encoding (SQL_ASCII) is checked here.
CREATE FUNCTION dmm.check_utf8(what text, value text) RETURNS void
LANGUAGE plpgsql STABLE AS $fn$
BEGIN
  IF current_setting('server_encoding') = 'UTF8' THEN
    RETURN;
  END IF;
  BEGIN
    PERFORM convert_from(convert_to(value, current_setting('server_encoding')), 'UTF8');
  EXCEPTION WHEN character_not_in_repertoire OR untranslatable_character THEN
    RAISE EXCEPTION 'dmm: % of % bytes is not valid UTF-8', what, octet_length(value)
      USING ERRCODE = '22021', HINT = 'identities and fairness keys must be UTF-8 text';
  END;
END
$fn$;

-- The registered kind, after checking both names; DM001 if the bucket has
-- no kind registered, or this kind was never registered.
CREATE FUNCTION dmm.registered_kind(p_bucket text, p_kind text) RETURNS dmm.kind
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
  k dmm.kind;
BEGIN
  PERFORM dmm.check_name('bucket', p_bucket);
  PERFORM dmm.check_name('kind', p_kind);
  SELECT * INTO k FROM dmm.kind WHERE bucket = p_bucket AND kind = p_kind;
  IF FOUND THEN
    RETURN k;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM dmm.kind WHERE bucket = p_bucket) THEN
    RAISE EXCEPTION 'dmm: unknown bucket ''%'': no process has registered a kind in it', p_bucket
      USING ERRCODE = 'DM001',
            HINT = 'check the name; a bucket is known once a process opened it and called register_kind';
  END IF;
  RAISE EXCEPTION 'dmm: bucket ''%'': kind ''%'' was never registered by any process', p_bucket, p_kind
    USING ERRCODE = 'DM001',
          HINT = format('check the name (registered: %s), or start a process that calls register_kind("%s")',
                        (SELECT string_agg(kind, ', ' ORDER BY kind) FROM dmm.kind WHERE bucket = p_bucket), p_kind);
END
$fn$;

-- 1-1024 bytes of UTF-8 (protocol/names.cpp, kMaxIdentityBytes).
CREATE FUNCTION dmm.check_identity(p_kind text, p_identity text) RETURNS void
LANGUAGE plpgsql STABLE AS $fn$
BEGIN
  IF p_identity IS NULL THEN
    RAISE EXCEPTION 'dmm: kind ''%'': identity is NULL', p_kind
      USING ERRCODE = '22004', HINT = 'pass an identity of 1-1024 bytes of UTF-8';
  END IF;
  IF p_identity = '' THEN
    RAISE EXCEPTION 'dmm: kind ''%'': identity is empty', p_kind
      USING ERRCODE = '22023', HINT = 'pass an identity of 1-1024 bytes of UTF-8';
  END IF;
  IF octet_length(p_identity) > 1024 THEN
    RAISE EXCEPTION 'dmm: kind ''%'': identity ''%...'' is too long (% bytes)', p_kind, left(p_identity, 40),
                    octet_length(p_identity)
      USING ERRCODE = '22023', HINT = 'the limit is 1024 bytes; use a shorter key, e.g. a hash of it';
  END IF;
  PERFORM dmm.check_utf8(format('kind ''%s'': identity', p_kind), p_identity);
END
$fn$;

-- The stored number of a priority class (protocol/vocabulary.hpp).
CREATE FUNCTION dmm.priority_number(p_kind text, p_priority text) RETURNS smallint
LANGUAGE plpgsql IMMUTABLE AS $fn$
BEGIN
  RETURN CASE p_priority WHEN 'low' THEN 0 WHEN 'normal' THEN 1 WHEN 'high' THEN 2 END;
END
$fn$;

-- One matter of a notify, checked: identity, state (an object within the
-- kind's max_state_bytes, counted as jsonb's text) and fairness key.
CREATE FUNCTION dmm.check_matter(k dmm.kind, p_identity text, p_state jsonb, p_fair_key text) RETURNS void
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
  size bigint;
BEGIN
  PERFORM dmm.check_identity(k.kind, p_identity);
  IF p_state IS NULL OR jsonb_typeof(p_state) <> 'object' THEN
    RAISE EXCEPTION 'dmm: kind ''%'' identity ''%'': state is %, not a JSON object', k.kind, left(p_identity, 64),
                    coalesce(jsonb_typeof(p_state), 'NULL')
      USING ERRCODE = '22023', HINT = 'pass the state as a jsonb object, as the kind''s C++ type serializes it';
  END IF;
  size := octet_length(p_state::text);
  IF size > k.max_state_bytes THEN
    RAISE EXCEPTION 'dmm: kind ''%'' identity ''%'': state is % bytes, over the bucket''s limit of %', k.kind,
                    left(p_identity, 64), size, k.max_state_bytes
      USING ERRCODE = '54000', HINT = 'keep large data elsewhere and store a reference (BucketOptions::max_state_bytes)';
  END IF;
  IF p_fair_key IS NOT NULL AND (p_fair_key = '' OR octet_length(p_fair_key) > 256) THEN
    RAISE EXCEPTION 'dmm: kind ''%'' identity ''%'': fair_key is % bytes', k.kind, left(p_identity, 64),
                    octet_length(p_fair_key)
      USING ERRCODE = '22023', HINT = 'a fairness key is 1-256 bytes of UTF-8, or NULL';
  END IF;
  IF p_fair_key IS NOT NULL THEN
    PERFORM dmm.check_utf8(format('kind ''%s'' identity ''%s'': fair_key', k.kind, left(p_identity, 64)), p_fair_key);
  END IF;
  IF p_fair_key IS NULL AND k.fair THEN
    RAISE EXCEPTION 'dmm: kind ''%'' identity ''%'': the kind has a fairness key and fair_key is NULL', k.kind,
                    left(p_identity, 64)
      USING ERRCODE = '22023', HINT = 'pass fair_key, the value the kind''s fairness_key (or tenant()) gives';
  END IF;
END
$fn$;

-- The kind, checked for a notify at `p_priority`; returns its number.
CREATE FUNCTION dmm.notify_target(p_bucket text, p_kind text, p_priority text, OUT k dmm.kind, OUT priority smallint)
LANGUAGE plpgsql STABLE AS $fn$
BEGIN
  k := dmm.registered_kind(p_bucket, p_kind);
  IF k.has_dependencies THEN
    RAISE EXCEPTION 'dmm: bucket ''%'' kind ''%'' declares dependencies(), which the SQL side cannot compute',
                    p_bucket, p_kind
      USING ERRCODE = 'DM002', HINT = 'notify this kind from C++ (Bucket::notify), which records its dependencies';
  END IF;
  priority := dmm.priority_number(p_kind, p_priority);
  IF priority IS NULL THEN
    RAISE EXCEPTION 'dmm: kind ''%'': unknown priority ''%''', p_kind, coalesce(p_priority, 'NULL')
      USING ERRCODE = '22023', HINT = 'use ''low'', ''normal'' (the default) or ''high''';
  END IF;
END
$fn$;

-- The upsert of kUpsertTemplate (store/matters.cpp) with every kick at
-- now(): `p_rows` is a jsonb array of {identity, state, priority, fair_key}
-- with distinct identities, in identity order. Returns how many matters
-- changed; wakes the bucket's sweepers at commit if any did.
CREATE FUNCTION dmm.upsert_rows(p_bucket text, p_kind text, p_rows jsonb) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
  changed bigint;
BEGIN
  WITH r AS (
    SELECT * FROM jsonb_to_recordset(p_rows) AS r(identity text, state jsonb, priority smallint, fair_key text)
  ), found AS (
    SELECT f.id FROM r CROSS JOIN LATERAL (
      SELECT id FROM dmm.matter WHERE bucket = p_bucket AND kind = p_kind AND identity = r.identity OFFSET 0) f
  ), locked AS (
    SELECT l.id FROM (SELECT id FROM found ORDER BY id) s
     CROSS JOIN LATERAL (SELECT id FROM dmm.matter WHERE id = s.id FOR UPDATE) l
  ), up AS (
    INSERT INTO dmm.matter AS m (bucket, kind, identity, state, due_at, priority, fair_key)
    SELECT p_bucket, p_kind, r.identity, r.state, now(), r.priority, r.fair_key
      FROM r WHERE (SELECT count(*) FROM locked) >= 0
     ORDER BY r.identity
    ON CONFLICT (bucket, kind, identity) DO UPDATE SET
      state = EXCLUDED.state,
      deleted_at = NULL,
      priority = EXCLUDED.priority,
      fair_key = EXCLUDED.fair_key,
      generation = m.generation + 1,
      phase = CASE WHEN m.lease_until >= now() THEN m.phase ELSE 'pending' END,
      attempts = 0,
      last_error = NULL,
      due_at = EXCLUDED.due_at,
      updated_at = now()
    WHERE m.state IS DISTINCT FROM EXCLUDED.state OR m.deleted_at IS NOT NULL
    RETURNING m.id, m.lease_until >= now() AS leased, m.lease_until, m.priority, m.fair_key
  ), kick AS (
    INSERT INTO dmm.kick AS k (matter_id, bucket, kind, kick_at, priority, fair_key)
    SELECT id, p_bucket, p_kind, CASE WHEN leased THEN lease_until ELSE now() END, priority, fair_key
      FROM up ORDER BY id
    ON CONFLICT (matter_id) DO UPDATE SET kick_at = least(k.kick_at, EXCLUDED.kick_at), priority = EXCLUDED.priority,
                                          fair_key = EXCLUDED.fair_key
  )
  SELECT count(*) INTO changed FROM up;
  IF changed > 0 THEN
    PERFORM pg_notify('dmm_wake', p_bucket);  -- kWakeChannel (store/kicks.hpp); the sweepers publish the tokens
  END IF;
  RETURN changed;
END
$fn$;

-- Stores `state` as what the matter (bucket, kind, identity) should be, in
-- the caller's transaction, with Bucket::notify's rules: a different state
-- is a new generation owed now; the same state changes nothing (unless the
-- matter was being removed: a notify cancels that). Returns true if the
-- matter changed.
CREATE FUNCTION dmm.notify(bucket text, kind text, identity text, state jsonb, priority text DEFAULT 'normal',
                           fair_key text DEFAULT NULL) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
  t record;
BEGIN
  SELECT * INTO t FROM dmm.notify_target($1, $2, $5);
  PERFORM dmm.check_matter(t.k, $3, $4, $6);
  RETURN dmm.upsert_rows($1, $2, jsonb_build_array(
           jsonb_build_object('identity', $3, 'state', $4, 'priority', t.priority, 'fair_key', $6))) > 0;
END
$fn$;

-- Many matters of one kind: `states` is a JSON array of objects
-- {"identity": "...", "state": {...}} (and, for a fair kind,
-- "fair_key": "..."); of an identity given twice the last state wins. All
-- are checked before any is stored. Returns how many matters changed.
CREATE FUNCTION dmm.notify_many(bucket text, kind text, states jsonb, priority text DEFAULT 'normal')
RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
  t record;
  e record;
  batch jsonb;
BEGIN
  SELECT * INTO t FROM dmm.notify_target($1, $2, $4);
  IF states IS NULL OR jsonb_typeof(states) <> 'array' THEN
    RAISE EXCEPTION 'dmm: kind ''%'': states is %, not a JSON array', $2, coalesce(jsonb_typeof(states), 'NULL')
      USING ERRCODE = '22023', HINT = 'pass [{"identity": "...", "state": {...}}, ...]';
  END IF;
  FOR e IN SELECT value AS v, ordinality AS n FROM jsonb_array_elements(states) WITH ORDINALITY LOOP
    IF jsonb_typeof(e.v) <> 'object' OR jsonb_typeof(e.v -> 'identity') IS DISTINCT FROM 'string'
       OR (e.v ? 'fair_key' AND jsonb_typeof(e.v -> 'fair_key') NOT IN ('string', 'null')) THEN
      RAISE EXCEPTION 'dmm: kind ''%'': element % of states is not {"identity": "<text>", "state": {...}}', $2, e.n
        USING ERRCODE = '22023', HINT = 'each element is an object with a string "identity" and an object "state"';
    END IF;
    PERFORM dmm.check_matter(t.k, e.v ->> 'identity', e.v -> 'state', e.v ->> 'fair_key');
  END LOOP;
  SELECT coalesce(jsonb_agg(jsonb_build_object('identity', id, 'state', s, 'priority', t.priority, 'fair_key', fk)
                            ORDER BY id), '[]')
    INTO batch
    FROM (SELECT DISTINCT ON (x.value ->> 'identity') x.value ->> 'identity' AS id, x.value -> 'state' AS s,
                 x.value ->> 'fair_key' AS fk
            FROM jsonb_array_elements(states) WITH ORDINALITY AS x(value, n)
           ORDER BY x.value ->> 'identity', x.n DESC) last;
  RETURN dmm.upsert_rows($1, $2, batch);
END
$fn$;

-- Bucket::remove: refused (2BP01) while matters that are not being removed
-- depend on it; a kind with finalize() gets a new generation in phase
-- deleting (the finalizer runs, then the row goes), one without is deleted
-- with its edges and kick. Returns false if there is no such matter.
CREATE FUNCTION dmm.remove(bucket text, kind text, identity text) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $fn$
#variable_conflict use_column
DECLARE
  k dmm.kind;
  mid bigint;
  blockers text;
BEGIN
  k := dmm.registered_kind($1, $2);
  PERFORM dmm.check_identity($2, $3);
  SELECT m.id INTO mid FROM dmm.matter m WHERE m.bucket = $1 AND m.kind = $2 AND m.identity = $3 FOR UPDATE;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  SELECT string_agg(format('%s ''%s''', b.kind, left(b.identity, 200)), ', ') INTO blockers FROM (
    SELECT d.kind, d.identity FROM dmm.dependency d
      JOIN dmm.matter dm ON dm.bucket = d.bucket AND dm.kind = d.kind AND dm.identity = d.identity
     WHERE d.bucket = $1 AND d.dep_kind = $2 AND d.dep_identity = $3 AND dm.deleted_at IS NULL
       AND NOT (d.kind = $2 AND d.identity = $3)
     ORDER BY 1, 2 LIMIT 5) b;
  IF blockers IS NOT NULL THEN
    RAISE EXCEPTION 'dmm: bucket ''%'': cannot remove % ''%'': % depend(s) on it', $1, $2, left($3, 200), blockers
      USING ERRCODE = '2BP01', HINT = 'remove them, or change their dependencies, first (nothing was removed)';
  END IF;
  IF k.has_finalize THEN
    UPDATE dmm.matter m SET
      deleted_at = coalesce(m.deleted_at, now()),
      generation = m.generation + 1,
      phase = CASE WHEN m.lease_until >= now() THEN m.phase ELSE 'deleting' END,
      attempts = 0,
      last_error = NULL,
      due_at = now(),
      updated_at = now()
     WHERE m.id = mid;
    INSERT INTO dmm.kick AS kk (matter_id, bucket, kind, kick_at, priority, fair_key)
    SELECT m.id, m.bucket, m.kind, CASE WHEN m.lease_until >= now() THEN m.lease_until ELSE now() END,
           CASE WHEN m.attempts = 0 AND m.phase IN ('pending', 'deleting') THEN m.priority ELSE 0 END, m.fair_key
      FROM dmm.matter m WHERE m.id = mid
    ON CONFLICT (matter_id) DO UPDATE SET kick_at = least(kk.kick_at, EXCLUDED.kick_at), priority = EXCLUDED.priority,
                                          fair_key = EXCLUDED.fair_key;
    PERFORM pg_notify('dmm_wake', $1);
  ELSE
    DELETE FROM dmm.dependency d WHERE d.bucket = $1 AND d.kind = $2 AND d.identity = $3;
    DELETE FROM dmm.matter m WHERE m.id = mid;
    DELETE FROM dmm.kick WHERE matter_id = mid;
  END IF;
  RETURN true;
END
$fn$;
