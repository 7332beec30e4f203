// The hot path of the protocol in PostgreSQL: the notify upsert, the claim,
// the write-back and the heartbeat, each one batched statement (one round
// trip for many matters). Functions take the caller's connection and keep no
// state. The operator transitions are in store/transitions.hpp.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <pqxx/pqxx>
#include <string>
#include <vector>

#include "dmm/detail/core.hpp"
#include "protocol/vocabulary.hpp"

namespace dmm::detail {

void prepare_matter_statements(pqxx::connection& conn);

// A matter whose token is owed after commit, and the priority class it goes
// to (sql.hpp, token_priority_sql).
struct TokenOwed {
  std::int64_t id;
  std::string kind;
  Priority priority = Priority::normal;
};

// Upserts absolute states (identities unique within `matters`), each with
// its priority. Returns the rows that changed and are not leased: their
// tokens are owed now. With `grace` zero the sweeper publishes instead (its
// kick is now()). `prepared`: the connection is one of dmm's (connect_pg),
// with statements prepared.
std::vector<TokenOwed> upsert_matters(pqxx::transaction_base& txn, const std::string& bucket,
                                      const std::string& kind, const std::vector<JsonMatter>& matters,
                                      std::chrono::milliseconds grace, bool prepared = true);


// A matter claimed by this worker: the lease is ours until `epoch` changes.
struct Claimed {
  std::int64_t id = 0;
  std::string identity;
  std::string state;  // JSON text
  std::int64_t generation = 0;
  std::int64_t epoch = 0;
  int attempts = 0;  // failed attempts so far
  bool deleting = false;
};

// What a claim leased, and (with a global limit) the matters it could have
// leased but found no free slot for: they stay due, leased by no one.
struct Claim {
  std::vector<Claimed> claimed;
  std::vector<std::int64_t> waiting;
};

// The global limits a claim obeys: `slots` (KindOptions::global_concurrency;
// 0: none) and, with `rate`, the kind's row in dmm.rate.
struct ClaimLimits {
  int slots = 0;
  bool rate = false;
  bool any() const { return slots > 0 || rate; }
};

// Where the claims of a fair kind are in their rotation across keys: the
// class they claim from and the key after which they go on.
struct FairTurn {
  Priority priority = Priority::normal;
  std::string after;  // "" before the first claim: from the first key
};

// Leases those of `ids` that are of `kind`, due and not leased, for `ttl`.
// With limits, only as many as they allow: each takes one of the kind's free
// slots and one rate token (docs/DESIGN.md, "Global concurrency", "Rate
// limit"). With `fair` (a kind with a fairness key), as many as `ids` names,
// but chosen among the due matters of the class key by key in turn, going on
// after `fair->after`, which it moves on (docs/DESIGN.md, "Fairness").
Claim claim(pqxx::connection& conn, const std::string& bucket, const std::string& kind,
            const std::vector<std::int64_t>& ids, const std::string& owner, std::chrono::milliseconds ttl,
            const ClaimLimits& limits = {}, FairTurn* fair = nullptr);

// Creates the slots 0..slots-1 of a kind with a global concurrency limit and
// the rate row of one with a rate limit, with these values (idempotent).
void ensure_limits(pqxx::connection& conn, const std::string& bucket, const std::string& kind, int slots,
                   const RateLimit& rate);


struct Outcome {
  std::int64_t id = 0;
  std::int64_t epoch = 0;
  std::int64_t generation = 0;
  OutcomeKind kind = OutcomeKind::done;
  std::optional<nlohmann::json> state;  // only when the materializer changed it
  std::int64_t delay_ms = 0;         // requeue or retry
  std::string error;                 // retry or failed
  // For the attempt history; started_ms 0: the attempt never ran (a release
  // of a queued matter) and is not recorded.
  std::int64_t started_ms = 0;   // system clock, ms since the Unix epoch
  std::int64_t duration_ms = 0;
  int attempt = 0;  // Context::attempt() of this attempt
};

// Where write_back records attempts: `limit` slots per matter (0: none).
struct HistoryWrite {
  std::string bucket;
  std::string worker;
  int limit = 0;
};

// Writes outcomes back, fenced by lease epoch, and notifies the dependents of
// matters it marks materialized at a new generation. Returns rows whose token
// is owed now (their state changed while they were leased, they were released,
// or they are woken dependents, of any kind).
// Wakes the sweepers (NOTIFY with `wake_payload`) when it scheduled a delay.
std::vector<TokenOwed> write_back(pqxx::connection& conn, const std::vector<Outcome>& outcomes,
                                     std::chrono::milliseconds grace, const std::string& wake_payload,
                                     const HistoryWrite& history = {});
// Gives back the global concurrency slots of the leases these outcomes end
// (after their write-back: until then the slot only looks busy a little
// longer). A kind without a limit holds none.
void release_slots(pqxx::connection& conn, const std::string& bucket, const std::string& kind,
                   const std::vector<Outcome>& outcomes);

// What a checkpoint found (see checkpoint()).
enum class CheckpointResult { saved, superseded, lease_lost };

// Stores `state` as the matter's state now, while its attempt runs: only
// under the lease `epoch` (still live) and at `generation` (a newer notify
// wins: superseded, nothing written). The generation is not bumped, as in a
// write-back (docs/DESIGN.md, "Steps").
CheckpointResult checkpoint(pqxx::connection& conn, std::int64_t id, std::int64_t epoch, std::int64_t generation,
                            const nlohmann::json& state);

// Extends leases we still hold; returns the ids whose lease was lost.
// `with_slots` (a kind with a global limit): each lease with its slot, and a
// lease whose slot was taken over is lost.
std::vector<std::int64_t> heartbeat(pqxx::connection& conn, const std::vector<std::int64_t>& ids,
                                    const std::vector<std::int64_t>& epochs, std::chrono::milliseconds ttl,
                                    bool with_slots = false);



}  // namespace dmm::detail
