// dmm's vocabulary, each word defined once: how an attempt ends (outcomes)
// and where a matter stands (phases). Their names are what the store writes
// (dmm.attempt.outcome, dmm.matter.phase), what /metrics labels and what
// dmmctl shows; the SQL arrays that map wire codes to names are built from
// these tables, never spelled by hand (docs/DESIGN.md, "Layout").
#pragma once

#include <array>
#include <cstddef>
#include <string>
#include <string_view>

#include "dmm/options.hpp"

namespace dmm::detail {

// How an attempt ended. The one place that maps an outcome to the next
// stored state is the write-back statement (store/matters.cpp).
enum class OutcomeKind { done, requeue, retry, failed, finalized, release };

struct OutcomeName {
  OutcomeKind kind;
  const char* name;
};
// Indexed by OutcomeKind; the wire code of an outcome is its index + 1 (a
// PostgreSQL array subscript).
inline constexpr std::array<OutcomeName, 6> kOutcomes = {{
    {OutcomeKind::done, "done"},
    {OutcomeKind::requeue, "requeue"},
    {OutcomeKind::retry, "retry"},
    {OutcomeKind::failed, "failed"},
    {OutcomeKind::finalized, "finalized"},
    {OutcomeKind::release, "release"},
}};

// True when entry i of `table` names enumerator i (so the table is indexed
// by the enum).
template <class Entry, std::size_t N, class Enum>
constexpr bool in_enum_order(const std::array<Entry, N>& table, Enum Entry::*key) {
  for (std::size_t i = 0; i < N; ++i)
    if (static_cast<std::size_t>(table[i].*key) != i) return false;
  return true;
}
static_assert(in_enum_order(kOutcomes, &OutcomeName::kind), "kOutcomes must list OutcomeKind in declaration order");

constexpr std::size_t index_of(OutcomeKind kind) { return static_cast<std::size_t>(kind); }
constexpr const char* to_string(OutcomeKind kind) { return kOutcomes[index_of(kind)].name; }
// The outcome's code in the write-back's arrays: a 1-based subscript of
// outcome_array_sql().
constexpr int outcome_code(OutcomeKind kind) { return static_cast<int>(index_of(kind)) + 1; }

// Where a matter stands (dmm.matter.phase; migration 0001's CHECK lists the
// same words).
enum class Phase { pending, reconciling, retrying, ready, deleting, failed };

struct PhaseName {
  Phase phase;
  const char* name;
};
inline constexpr std::array<PhaseName, 6> kPhases = {{
    {Phase::pending, "pending"},
    {Phase::reconciling, "reconciling"},
    {Phase::retrying, "retrying"},
    {Phase::ready, "ready"},
    {Phase::deleting, "deleting"},
    {Phase::failed, "failed"},
}};

static_assert(in_enum_order(kPhases, &PhaseName::phase), "kPhases must list Phase in declaration order");

constexpr const char* to_string(Phase phase) { return kPhases[static_cast<std::size_t>(phase)].name; }

// Priority classes (dmm::Priority), lowest first: what dmmctl and /metrics
// call them, and the suffix of their NATS subjects and consumers ("" for
// normal, so the normal class keeps the names of a bucket made before
// priorities; names.hpp). The stored value (dmm.matter.priority) is the
// index.
struct PriorityName {
  Priority priority;
  const char* name;
  const char* suffix;
};
inline constexpr std::array<PriorityName, 3> kPriorities = {{
    {Priority::low, "low", "~low"},
    {Priority::normal, "normal", ""},
    {Priority::high, "high", "~high"},
}};
static_assert(in_enum_order(kPriorities, &PriorityName::priority),
              "kPriorities must list Priority in declaration order");

constexpr std::size_t index_of(Priority p) { return static_cast<std::size_t>(p); }
constexpr bool is_known(Priority p) { return index_of(p) < kPriorities.size(); }
constexpr const char* to_string(Priority p) { return is_known(p) ? kPriorities[index_of(p)].name : "unknown"; }
// Highest class first: the order workers take tokens in.
inline constexpr std::array<Priority, 3> kPrioritiesHighFirst = {Priority::high, Priority::normal, Priority::low};

// How the error of a matter that gave up after KindOptions::max_attempts
// begins ("gave up after 3 attempts ..."): what why, stats and /metrics
// recognise it by.
inline constexpr std::string_view kGaveUpPrefix = "gave up after ";

// "ARRAY['done', 'requeue', ...]": outcome names by wire code, for SQL.
std::string outcome_array_sql();
// "('pending', 'reconciling', ...)": every phase, for SQL (IN lists, CHECKs).
std::string phase_list_sql();

}  // namespace dmm::detail
