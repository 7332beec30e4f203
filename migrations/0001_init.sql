-- dmm's schema: one row per matter, keyed by (bucket, kind, identity).
-- Append-only: never edit this file after it shipped; add 0002_*.sql instead.

CREATE TABLE dmm.matter (
  id                      bigserial PRIMARY KEY,
  bucket                  text        NOT NULL,
  kind                    text        NOT NULL,
  identity                text        NOT NULL,
  state                   jsonb       NOT NULL,
  -- Bumped by every notify/update/remove that changes the desired state;
  -- never by a materializer's write-back.
  generation              bigint      NOT NULL DEFAULT 1,
  -- The generation the last successful materialization saw.
  materialized_generation bigint      NOT NULL DEFAULT 0,
  phase                   text        NOT NULL DEFAULT 'pending'
    CHECK (phase IN ('pending', 'reconciling', 'retrying', 'ready', 'deleting', 'failed')),
  -- Failed attempts since the last success or change of state.
  attempts                integer     NOT NULL DEFAULT 0,
  last_error              text,
  -- When work is owed from: a worker may claim the matter once due_at <= now().
  -- NULL: nothing owed.
  due_at                  timestamptz,
  -- When the sweeper should (re)send a token, because none may be on its way:
  -- a little after a notify, at due_at for delays, at lease expiry while
  -- leased. NULL: no token owed.
  kick_at                 timestamptz,
  lease_owner             text,
  lease_until             timestamptz,
  -- Bumped by every claim; write-back is fenced by it.
  lease_epoch             bigint      NOT NULL DEFAULT 0,
  -- Set by remove(): finalize, then delete. Cleared by a notify.
  deleted_at              timestamptz,
  created_at              timestamptz NOT NULL DEFAULT now(),
  updated_at              timestamptz NOT NULL DEFAULT now(),
  UNIQUE (bucket, kind, identity)
);

-- The sweeper's query: rows whose token is owed, earliest first.
CREATE INDEX matter_kick ON dmm.matter (bucket, kind, kick_at) WHERE kick_at IS NOT NULL;
