// Options for Bucket::open and Bucket::register_kind. Every field states its
// default; construction applies defaults and then validates, and a bad value
// is a dmm::InvalidArgument naming the field and the fix.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>

namespace spdlog {
class logger;
}

namespace dmm {

using std::chrono::milliseconds;

// Capped exponential backoff with jitter: attempt n (1-based) waits
// min(max, initial * multiplier^(n-1)), then scaled by a random factor in
// [1 - jitter, 1 + jitter] (never above max).
struct Backoff {
  milliseconds initial{200};  // delay after the first failure
  milliseconds max{60'000};   // cap for any single delay
  double multiplier = 2.0;    // growth per failed attempt, >= 1
  double jitter = 0.2;        // relative spread, in [0, 1]
};

struct BucketOptions {
  // Bucket name: 1-64 characters from [A-Za-z0-9_-]. Required. It names the
  // JetStream stream (DMM_<name>) and the subjects dmm.<name>.<kind>.<row id>.
  std::string name{};
  // PostgreSQL URL (postgresql://user:password@host:port/db?sslmode=...) or
  // key=value connection string. Empty: libpq's own defaults, as for psql
  // (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD, PGSSLMODE, ~/.pgpass,
  // the local socket); what the URL leaves out comes from them too.
  std::string postgres{};
  // NATS URL (nats://user:password@host:port, several separated by commas;
  // tls://host:port for TLS). Required.
  std::string nats{};
  // PEM file of the CA that signed the NATS servers' certificates. Setting it
  // (or a tls:// URL) requires TLS. Default: none (system trust for tls://).
  std::string nats_ca_file{};
  // PEM files of a client certificate and key, for NATS servers that verify
  // clients (mutual TLS). Default: none.
  std::string nats_cert_file{};
  std::string nats_key_file{};
  // A NATS .creds file (the user JWT and its NKey seed, as `nsc generate
  // creds` writes it), for servers run in operator mode with JWTs. Default:
  // none. Read at each connect; its contents are never logged or shown.
  std::string nats_creds_file{};
  // A file holding a user NKey seed (SU..., as `nk -gen user` writes it), for
  // servers whose config lists the user's public key (`nkey: U...`); the
  // public key is derived from the seed. Default: none. At most one of
  // nats_creds_file, nats_nkey_seed_file and a user:password in the URL.
  std::string nats_nkey_seed_file{};
  // Names this process in leases and logs. Default: "<hostname>:<pid>:<random>".
  std::string worker_id{};
  // Replicas of the bucket's stream when dmm creates it: 3 on a three-node
  // JetStream cluster so tokens survive a node. Default 1.
  int stream_replicas = 1;
  // A notified matter gets a token at once; if no worker has acted within
  // this grace the sweeper sends another (tokens are lossy). Default 5 s.
  milliseconds token_grace{5'000};
  // Largest state accepted by notify, in bytes of JSON. Default 1 MiB.
  std::size_t max_state_bytes = 1 << 20;
  // Apply the embedded migrations on open (under an advisory lock). Default
  // true; with false, open checks the schema and fails if it is behind.
  bool migrate = true;
  // Logger for everything this bucket does. Default: spdlog's default logger.
  std::shared_ptr<spdlog::logger> logger{};
  // Attempt history (dmm.attempt, shown by dmmctl describe) older than this
  // is deleted by the sweepers, a batch at a time, every 10 minutes.
  // Default 7 days.
  milliseconds history_retention{7LL * 24 * 3600 * 1000};

  // The options the environment gives, the twelve-factor way; unset or empty
  // variables keep the defaults above. InvalidArgument naming the variable
  // for a value that does not parse. Durations are a number with a unit:
  // 250ms, 5s, 10m, 2h, 7d.
  //   DMM_BUCKET              name
  //   DMM_POSTGRES_URL        postgres (unset: libpq's PG* variables)
  //   DMM_NATS_URL            nats
  //   DMM_NATS_CA_FILE, DMM_NATS_CERT_FILE, DMM_NATS_KEY_FILE
  //   DMM_NATS_CREDS_FILE     nats_creds_file
  //   DMM_NATS_NKEY_SEED_FILE nats_nkey_seed_file
  //   DMM_WORKER_ID           worker_id
  //   DMM_STREAM_REPLICAS     stream_replicas
  //   DMM_TOKEN_GRACE         token_grace (a duration)
  //   DMM_MAX_STATE_BYTES     max_state_bytes
  //   DMM_MIGRATE             migrate (true/false, 1/0, yes/no)
  //   DMM_HISTORY_RETENTION   history_retention (a duration)
  // The values are checked further by Bucket::open, as for any options.
  static BucketOptions from_env();
};

// Options for Bucket::serve_http: `bucket.serve_http(":9464", {.action_token = t})`.
struct HttpOptions {
  // Turns on the web view's actions (retry and remove on a matter's page).
  // Each one is a POST that must carry this token, in the form field `token`
  // or the header `X-DMM-Token`; anything else is refused with 403. Empty
  // (default): actions are off and every one is refused. At least 16 bytes
  // when set. Never logged or shown.
  std::string action_token{};
  // How often the web view's chart samples the bucket's matters by phase (one
  // PostgreSQL read) and this process's materialization and error counters;
  // the chart shows the last 15 minutes. Default 5 s; 100 ms to 60 s.
  milliseconds sample_every{5'000};

  // The options the environment gives (unset or empty: the defaults above):
  //   DMM_HTTP_TOKEN          action_token
  //   DMM_HTTP_SAMPLE_EVERY   sample_every (a duration: 500ms, 5s)
  static HttpOptions from_env();
};

// At most `count` starts per `per`, across all processes of the bucket, and
// up to `burst` at once after a quiet spell: in any window of length `per`,
// at most count + burst starts (a token bucket; docs/DESIGN.md, "Rate
// limit"). `count` 0: no rate limit.
struct RateLimit {
  int count = 0;           // 0..1,000,000
  milliseconds per{1000};  // 1 ms to 24 h
  int burst = 1;           // 1..1,000,000
};

struct KindOptions {
  // Materializations of this kind running at once in this process. Default 4.
  int concurrency = 4;
  // Most matters claimed in one round trip (a token may name up to 64;
  // fetches are sized to match). Default 256. Larger batches cost
  // PostgreSQL less per matter (docs/DESIGN.md, "Hot path"), at the price of
  // one process leasing a larger share of a backlog (see `prefetch`).
  int batch = 256;
  // How long a claimed matter stays leased without a heartbeat. Heartbeats
  // renew it every third of this while the process is alive; a process that
  // dies (or is cut off from PostgreSQL) loses it after this long, and then
  // another worker may take the matter over. Default 15 s.
  milliseconds lease_ttl{15'000};
  // How long before its lease could be taken over a process that cannot renew
  // it (PostgreSQL unreachable or slow) requests the attempt's stop token: a
  // materializer that honours the token must return within this time for
  // exclusion to hold (docs/DESIGN.md, "Self-expiry"). Counted by the
  // process's own clock from the sending of the last heartbeat that
  // succeeded. Default 0: a third of lease_ttl; else at most half of it.
  milliseconds lease_margin{0};
  // Retry schedule after an exception. Default: 200 ms doubling to 60 s, ±20%.
  // A dmm::RetryAfter sets the delay of its own retry instead.
  Backoff backoff{};
  // Failed attempts after which a matter gives up: it is `failed`, and its
  // last_error says "gave up after N attempts" and names the last error. A
  // new state or Bucket::retry starts the count again. A TerminalError fails
  // at once, a stop-released attempt does not count. Default 0: retry
  // forever; at most 1,000,000.
  int max_attempts = 0;
  // Materialize every ready matter of this kind again about this often, as
  // controller-runtime's SyncPeriod does: a done attempt is due again after
  // resync_every, ±10% so that matters materialized together spread out (a
  // materializer's own requeue_after wins). Matters that were ready before
  // resync was turned on are scheduled by the sweeper when work() starts,
  // spread evenly over one period. Each resync is one due time and one kick
  // row, found by index, so its cost does not grow with the number of
  // matters. Default 0: off; else 1 s to 365 days.
  milliseconds resync_every{0};
  // On stop, how long in-flight materializations may run before their leases
  // are released (their stop token is requested at once). Default 10 s.
  milliseconds stop_grace{10'000};
  // Attempts kept per matter in the history (the last N, written in the same
  // batched write-back, as a ring: no delete on the hot path). 0 keeps none.
  // Default 10; at most 1000.
  int history_limit = 10;
  // Most matters of this kind the process holds at once: claimed (leased)
  // and not yet written back, whether queued for an executor, running, or
  // waiting for the batched write-back. It must exceed `concurrency` and leave
  // room for a whole `batch`, or fetches shrink and every matter waits for a
  // full fetch -> claim -> materialize -> write-back cycle (docs/DESIGN.md,
  // "Engine threads").
  // Held matters are leased to this process, so a larger value lets one
  // process take more of a backlog before others see it.
  // Default 0: 2 x max(concurrency, batch) (512 with the default batch).
  int prefetch = 0;
  // Most materializations of this kind running at once across all processes
  // of the bucket, for a downstream API that takes no more (DBOS's queue
  // `concurrency`). Enforced in PostgreSQL: each running matter holds one of
  // N slots (dmm.slot), taken in the claim and given back with the outcome;
  // a slot held by a process that died is free again when its lease ends
  // (lease_ttl). A matter due while all slots are taken waits, leased by no
  // one, and `dmmctl why` says so. Every process of the kind should give the
  // same N; while they differ (a rolling change) the largest one given is in
  // force (docs/DESIGN.md, "Global concurrency"). Default 0: no global
  // limit; at most 100000.
  int global_concurrency = 0;
  // Most starts of this kind's materializations per period across all
  // processes, for a downstream API with a quota (DBOS's queue `limiter`):
  // `{.count = 10, .per = 1s, .burst = 5}`. Enforced in PostgreSQL
  // (dmm.rate, one row per kind, spent by the claim). A due matter waits,
  // leased by no one, while the rate is spent, and `dmmctl why` says so. The
  // values of the worker that started last are in force. Default: none.
  RateLimit rate_limit{};
  // Fairness across tenants (Hatchet's GROUP_ROUND_ROBIN): a function of a
  // matter's state that names its key, such as its tenant. Among the due
  // matters of one priority class, the claims of this kind take matters key
  // by key in turn, so a key with a million due matters does not starve one
  // with ten (docs/DESIGN.md, "Fairness"). A Materializer with a
  // `std::string tenant() const` member is fair by it without this option;
  // the option wins over the member. A key is 1-256 bytes: an empty or a
  // longer one (or a function that throws) makes the notify an
  // InvalidArgument naming the matter. Every process that notifies or works
  // the kind must register it alike. Default: none (claims take the matters
  // their tokens name, in token order).
  std::function<std::string(const nlohmann::json& state)> fairness_key{};
};

// How urgent a matter's work is. Workers in every process take due matters
// of a higher class first; what a process has already claimed may finish
// first (docs/DESIGN.md, "Priority"). A notify is `normal` unless it says
// otherwise; a retry after a failure, a requeue_after and a resync run at
// `low`; Bucket::retry and a removal run at the priority of the last notify.
enum class Priority : std::uint8_t { low = 0, normal = 1, high = 2 };

// How one notify schedules its work: `notify(obj, {.delay = 30s})`. The state
// is stored at once either way; a delayed matter is not due (no worker takes
// it) before its time. An identical state stays a no-op and keeps its
// schedule. A notify that is not delayed makes the matter due now again.
struct NotifyOptions {
  // Not due before now + delay. Default 0: due now. Negative: InvalidArgument.
  milliseconds delay{0};
  // Not due before this time (of this process's clock; PostgreSQL's clock
  // takes over from the remaining delay). A time up to an hour in the past
  // means now; one further back is an InvalidArgument (a bug, such as an
  // unset time). Only one of delay and not_before may be set.
  std::optional<std::chrono::system_clock::time_point> not_before{};
  // The class the matter's work runs in: `notify(obj, {.priority =
  // dmm::Priority::high})` for a change a user is waiting for. The latest
  // notify of a new state sets it (an identical state changes nothing).
  // Default normal; a value outside the enum is an InvalidArgument.
  Priority priority = Priority::normal;
};

}  // namespace dmm
