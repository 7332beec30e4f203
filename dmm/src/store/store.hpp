// The PostgreSQL side of the protocol: every statement dmm runs against
// dmm.matter, each batched (one round trip for many matters). Functions take
// the caller's connection; none of them keeps state.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <pqxx/pqxx>
#include <string>
#include <vector>

#include "dmm/detail/core.hpp"

namespace dmm::detail {

void prepare_statements(pqxx::connection& conn);

// A row to publish a token for after commit.
// After a statement that made the matters `ids` due (remove, retry): the
// sweeper looks at each no later than `grace` from now (a leased one at its
// lease's end), so a token lost on the way is sent again.
void arm_kicks(pqxx::transaction_base& txn, const std::vector<std::int64_t>& ids, std::chrono::milliseconds grace);
// After deleting the matters `ids`: their kicks go too.
void forget_kicks(pqxx::transaction_base& txn, const std::vector<std::int64_t>& ids);

struct TokenOwed {
  std::int64_t id;
  std::string kind;
};

// Upserts absolute states (identities unique within `matters`). Returns the
// rows that changed and are not leased: their tokens are owed now. With
// `grace` zero the sweeper publishes instead (its kick is now()). `prepared`:
// the connection is one of dmm's (connect_pg), with statements prepared.
std::vector<std::int64_t> upsert_matters(pqxx::transaction_base& txn, const std::string& bucket,
                                         const std::string& kind, const std::vector<JsonMatter>& matters,
                                         std::chrono::milliseconds grace, bool prepared = true);

// The dependencies a notified matter declares (dmm/dependency.hpp).
struct MatterDependencies {
  std::string identity;
  std::vector<Dependency> dependencies;
};

// Replaces the stored dependency edges of `matters` (all of one kind) with
// theirs. Returns a cycle through one of them ("kind identity" per step, the
// first repeated at the end) if the new edges close one: the caller must then
// roll back.
std::optional<std::vector<std::string>> store_dependencies(pqxx::transaction_base& txn, const std::string& bucket,
                                                          const std::string& kind,
                                                          const std::vector<MatterDependencies>& matters);

// Up to `limit` live (not being removed) matters that depend on this one.
std::vector<Dependency> dependents_of(pqxx::transaction_base& txn, const std::string& bucket, const std::string& kind,
                                      std::string_view identity, int limit);

// Deletes the dependency edges of a matter that is gone.
void delete_dependencies(pqxx::transaction_base& txn, const std::string& bucket, const std::string& kind,
                         std::string_view identity);

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

std::vector<Claimed> claim(pqxx::connection& conn, const std::string& bucket, const std::string& kind,
                           const std::vector<std::int64_t>& ids, const std::string& owner,
                           std::chrono::milliseconds ttl);

// How an attempt ended; the one place that maps it to the next stored state is
// the write_back statement (store.cpp).
enum class OutcomeKind { done, requeue, retry, failed, finalized, release };
const char* to_string(OutcomeKind kind);

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

// Extends leases we still hold; returns the ids whose lease was lost.
std::vector<std::int64_t> heartbeat(pqxx::connection& conn, const std::vector<std::int64_t>& ids,
                                    const std::vector<std::int64_t>& epochs, std::chrono::milliseconds ttl);

struct Swept {
  int looked = 0;                  // kicks that came due and were handled
  std::vector<std::int64_t> owed;  // of those, the matters whose token is owed now
};

// Handles up to `limit` kicks of (bucket, kind) that came due (dmm.kick):
// a matter due and not leased is owed a token and looked at again `grace`
// later; a leased one at its lease's end, one due later at its due time; the
// kick of a matter that owes nothing is deleted.
Swept sweep(pqxx::connection& conn, const std::string& bucket, const std::string& kind, int limit,
            std::chrono::milliseconds grace);

// Deletes up to `limit` history rows of the bucket older than `retention`;
// returns how many.
std::int64_t prune_history(pqxx::connection& conn, const std::string& bucket, std::chrono::milliseconds retention,
                           int limit);

// Milliseconds until the next kick of (bucket, kind); nullopt if none.
std::optional<std::int64_t> next_kick_in_ms(pqxx::connection& conn, const std::string& bucket,
                                            const std::string& kind);

inline constexpr const char* kWakeChannel = "dmm_wake";

}  // namespace dmm::detail
