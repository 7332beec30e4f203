-- Dependencies between matters (dmm/include/dmm/dependency.hpp).
-- Append-only: never edit this file after it shipped; add 0005_*.sql instead.

-- "(kind, identity) depends on (dep_kind, dep_identity)", within a bucket.
-- Written with every notify/update of a kind whose type declares
-- dependencies(); the dependency need not exist yet. Keyed by names, not row
-- ids, for that reason.
CREATE TABLE dmm.dependency (
  bucket       text NOT NULL,
  kind         text NOT NULL,
  identity     text NOT NULL,
  dep_kind     text NOT NULL,
  dep_identity text NOT NULL,
  PRIMARY KEY (bucket, kind, identity, dep_kind, dep_identity)
);
-- Who depends on this matter? (write-back wakes them; remove refuses).
CREATE INDEX dependency_reverse ON dmm.dependency (bucket, dep_kind, dep_identity);
