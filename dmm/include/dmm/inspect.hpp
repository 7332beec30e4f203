// Read-only views of stored matters and a few administrative actions, for
// operating tools ("why is this matter not ready?"): dmmctl, the example's
// `debug` and the web view all use these, so they say the same thing.
//
// Contract:
// - Needs only PostgreSQL (stream_stats also NATS) and no knowledge of the
//   user's types; works for any bucket.
// - Reads never lock or change anything. An expired lease shows as no lease.
// - Times are UTC ISO 8601 strings with milliseconds ("2025-01-31T12:00:00.123Z"),
//   empty when there is none.
// - An unreachable server is a ConnectionError naming the masked URL.
// - retry_matters/remove_matters change only matters matching the query and
//   wake the bucket's sweepers (NOTIFY), which send the tokens: the work is
//   done by the bucket's worker processes.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

namespace dmm {

// A kind's rate limit as stored in dmm.rate (count 0: none), and the starts
// it allows now (fractional: they accrue).
struct RateState {
  int count = 0;
  std::int64_t per_ms = 0;
  int burst = 0;
  double available = 0;
};

struct MatterStatus {
  std::int64_t id = 0;
  std::string kind;
  std::string identity;
  std::string phase;  // pending, reconciling, retrying, ready, deleting, failed
  std::int64_t generation = 0;
  std::int64_t materialized_generation = 0;
  int attempts = 0;         // failed attempts since the last success or change of state
  std::string last_error;   // empty when none
  std::string due_at;       // when work is next owed; empty when none
  std::string kick_at;      // when the sweeper (re)sends a token; empty when none is owed
  std::string lease_owner;  // worker id; empty when not leased (or the lease expired)
  std::string lease_until;
  std::string leased_at;  // when the current lease was taken
  std::string created_at;
  std::string updated_at;
  bool removing = false;  // remove() was called; finalize and delete are pending
  std::int64_t age_ms = 0;                // since created
  std::optional<std::int64_t> due_in_ms;  // until due_at (negative: overdue); none when nothing owed
  std::string state;                      // JSON text
  // The kind's global concurrency slots (KindOptions::global_concurrency; 0:
  // no global limit) and how many are held now.
  std::int64_t slots = 0;
  std::int64_t slots_in_use = 0;
  RateState rate{};  // the kind's rate limit (KindOptions::rate_limit)
};

struct InspectQuery {
  std::string postgres{};  // PostgreSQL URL
  std::string bucket{};
  std::optional<std::string> kind{};
  std::optional<std::string> identity{};
  std::optional<std::string> phase{};
  int limit = 1000;
  // Only identities that start with these bytes (a search). Default: any.
  std::optional<std::string> identity_prefix{};
  // Identities in natural order within a kind: runs of digits compare as
  // numbers, so player-2 comes before player-10. Default false: byte order.
  // It sorts every matching matter in PostgreSQL: narrow by kind, phase or
  // prefix on a bucket of millions.
  bool natural_order = false;
  // Matters skipped, in the query's order (paging: offset = page * limit).
  int offset = 0;
};

// Matters of the bucket matching the query, ordered by kind and identity.
std::vector<MatterStatus> inspect(const InspectQuery& query);
// How many matters match the query (its limit and offset are ignored).
std::int64_t count_matters(const InspectQuery& query);
// Matters of the bucket by phase, all kinds together (phases with none are
// absent): one cheap read, for the web view's chart.
std::map<std::string, std::int64_t> phase_counts(const std::string& postgres, const std::string& bucket);
// Buckets that have matters, in name order.
std::vector<std::string> list_buckets(const std::string& postgres);

// One attempt in a matter's history (KindOptions::history_limit are kept).
struct AttemptRecord {
  std::int64_t seq = 0;  // 1, 2, ... per matter
  std::int64_t generation = 0;
  int attempt = 0;  // Context::attempt(): 1 after a change of state or success
  std::string started_at;
  std::int64_t duration_ms = 0;
  std::string outcome;  // done, requeue, retry, failed, finalized, release
  std::string error;    // empty when none
  std::string worker;
};

// The last `limit` attempts of one matter, newest first.
std::vector<AttemptRecord> attempt_history(const std::string& postgres, std::int64_t matter_id, int limit = 10);

struct MatterDetail {
  MatterStatus status;
  std::vector<AttemptRecord> history;  // newest first
  std::string why;                     // explain(status, history)
};

// One matter with its history and why sentence; nullopt if there is none.
std::optional<MatterDetail> describe(const std::string& postgres, const std::string& bucket, const std::string& kind,
                                     const std::string& identity, int history_limit = 10);

// One plain sentence on why the matter is (not) ready: waiting for backoff,
// leased by a worker, waiting for a token, failed terminally, being removed,
// or ready. `history` (newest first) adds when the last attempt ran.
std::string explain(const MatterStatus& matter, const std::vector<AttemptRecord>& history = {});

// describe as readable text (dmmctl describe, example debug), ending in a newline.
std::string format_detail(const MatterDetail& detail);

// JSON views (dmmctl --output json, the web view).
void to_json(nlohmann::json& j, const MatterStatus& m);
void to_json(nlohmann::json& j, const AttemptRecord& a);
void to_json(nlohmann::json& j, const MatterDetail& d);

struct KindStats {
  std::string kind{};
  std::map<std::string, std::int64_t> phases{};  // matters by phase (phases with none are absent)
  std::int64_t total = 0;
  std::int64_t due_now = 0;    // work owed now and not leased: waiting for a worker
  // due_now by the priority class its token goes to ("high", "normal", "low";
  // a retry, requeue or resync is low); classes with none are absent.
  std::map<std::string, std::int64_t> due_by_priority{};
  std::int64_t in_flight = 0;  // leased by a live worker
  std::int64_t gave_up = 0;    // failed after KindOptions::max_attempts (counted in phases["failed"] too)
  // Global concurrency slots of the kind (0: no global limit) and how many
  // are held now; with all held, the due_now matters wait for a slot.
  std::int64_t slots = 0;
  std::int64_t slots_in_use = 0;
  RateState rate{};  // the kind's rate limit; with available < 1, due_now waits for it
  std::string oldest_due{};      // due_at of the longest-waiting of due_now; empty when none
  std::int64_t oldest_due_age_ms = 0;
  // From NATS (stream_stats); nullopt when not read or the consumer is missing.
  // Tokens in the stream for this kind (undelivered + unacked); one token may
  // name up to 64 matters.
  std::optional<std::int64_t> tokens_pending{};
  std::optional<std::int64_t> consumer_lag{};    // tokens not yet delivered to any worker
  std::optional<std::int64_t> ack_pending{};     // delivered, not yet acked
};

// Per kind of the bucket, in name order.
std::vector<KindStats> kind_stats(const std::string& postgres, const std::string& bucket);
// A duration for people, sign dropped: "850ms", "4.2s", "3m12s", "2h05m",
// "3d04h" (dmmctl and explain use it).
std::string human_duration(std::int64_t ms);
// KindStats::due_by_priority as "<high>/<normal>/<low>", e.g. "2/310/0"
// (dmmctl stats and the web view).
std::string due_by_priority_text(const KindStats& k);
// KindStats' slots as "<in use>/<slots>", e.g. "5/5"; "-" without a global
// limit (dmmctl stats and the web view).
std::string slots_text(const KindStats& k);
// A rate limit as "10 per 1s, burst 5"; "-" without one.
std::string rate_text(const RateState& r);

// TLS and credentials files for NATS (empty: none), as in
// BucketOptions::nats_ca_file etc. and nats_creds_file, nats_nkey_seed_file.
struct NatsTls {
  std::string ca_file{}, cert_file{}, key_file{};
  std::string creds_file{}, nkey_seed_file{};
};
// Fills the NATS fields of `stats` from the bucket's stream and each kind's
// durable consumer (read-only: creates nothing).
void stream_stats(std::vector<KindStats>& stats, const std::string& nats, const std::string& bucket,
                  const NatsTls& tls = {});

// Runs matching `failed` or `retrying` matters again now, attempts reset.
// Returns how many.
std::int64_t retry_matters(const InspectQuery& query);
// Removes matching matters. Default: marked for removal like Bucket::remove —
// a worker of the kind runs finalize (if the type has one), then deletes the
// row. `skip_finalize`: deletes the rows now, without finalize. Returns how many.
std::int64_t remove_matters(const InspectQuery& query, bool skip_finalize = false);

}  // namespace dmm
