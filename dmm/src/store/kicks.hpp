// dmm.kick, one row per matter that may be owed a token: when the sweeper
// looks at it again. The invariant every writer keeps: a matter with due_at
// set has a kick row (docs/DESIGN.md, "Protocol (as built)").
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <optional>
#include <pqxx/pqxx>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/vocabulary.hpp"

namespace dmm::detail {

// The channel sweepers LISTEN on; the payload is the bucket.
inline constexpr const char* kWakeChannel = "dmm_wake";

void prepare_kick_statements(pqxx::connection& conn);

// After a statement that made the matters `ids` due (remove, retry): the
// sweeper looks at each no later than `grace` from now (a leased one at its
// lease's end), so a token lost on the way is sent again.
void arm_kicks(pqxx::transaction_base& txn, const std::vector<std::int64_t>& ids, std::chrono::milliseconds grace);
// After deleting the matters `ids`: their kicks go too.
void forget_kicks(pqxx::transaction_base& txn, const std::vector<std::int64_t>& ids);

// Wakes every sweeper of `bucket` at commit (NOTIFY on kWakeChannel).
void wake_sweepers(pqxx::transaction_base& txn, const std::string& bucket);

struct Swept {
  int looked = 0;  // kicks that came due and were handled
  // Of those, the matters whose token is owed now, by priority class
  // (index_of(Priority)).
  std::array<std::vector<std::int64_t>, kPriorities.size()> owed;
  std::size_t owed_count() const {
    std::size_t n = 0;
    for (const auto& ids : owed) n += ids.size();
    return n;
  }
};

// Handles up to `limit` kicks of (bucket, kind) that came due (dmm.kick):
// a matter due and not leased is owed a token and looked at again `grace`
// later; a leased one at its lease's end, one due later at its due time; the
// kick of a matter that owes nothing is deleted.
// Only the kicks of class `priority` (dmm.kick.priority): each class is swept
// on its own, so that one is never found behind another's backlog.
Swept sweep(pqxx::connection& conn, const std::string& bucket, const std::string& kind, Priority priority,
            int limit, std::chrono::milliseconds grace);

// One batch of schedule_unscheduled_resyncs.
struct ResyncBatch {
  std::int64_t scheduled = 0;           // matters given a due time
  std::optional<std::int64_t> last_id;  // the last id looked at; nullopt: no more rows
};

// Of up to `limit` matters of (bucket, kind) with an id above `after_id`, in
// id order, gives each ready one that owes nothing a due time spread at
// random over `period` from now, and its kick. For KindOptions::resync_every
// on matters that were ready before it was set.
ResyncBatch schedule_unscheduled_resyncs(pqxx::connection& conn, const std::string& bucket, const std::string& kind,
                                         std::chrono::milliseconds period, std::int64_t after_id, int limit);

// Milliseconds until the next kick of (bucket, kind) in class `priority`;
// nullopt if none.
std::optional<std::int64_t> next_kick_in_ms(pqxx::connection& conn, const std::string& bucket,
                                            const std::string& kind, Priority priority);

}  // namespace dmm::detail
