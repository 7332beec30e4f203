// Helpers for building statements and their parameters (libpqxx 6.4 cannot
// bind std::vector, so arrays travel as text literals), reading results, and
// the SQL that several statements share, written once.
#pragma once

#include <cstdint>
#include <pqxx/result>
#include <string>
#include <string_view>
#include <vector>

#include "dmm/options.hpp"

namespace dmm::detail {

// "{1,2,3}" for use as $n::bigint[].
std::string bigint_array(const std::vector<std::int64_t>& values);

// The first column of every row, as ids.
std::vector<std::int64_t> ids_of(const pqxx::result& rows);

// `text` with every `from` replaced by `to` (for statement templates).
std::string replace_all(std::string text, std::string_view from, std::string_view to);

// The SET list of "a new generation, owed now" on `dmm.matter m`: generation
// bumped, attempts and error reset, due now. A leased matter keeps its phase
// (its holder's write-back sees the new generation); a free one takes
// `free_phase`, an SQL expression. Every statement that changes what a
// matter should be (notify, remove, a woken dependent) uses it.
// `due_at`: when the work is owed (an SQL expression; a delayed notify's).
std::string new_generation_owed_now(std::string_view free_phase, std::string_view due_at = "now()");

// The priority class (protocol/vocabulary.hpp, as a number) a token of
// `dmm.matter m` goes to, from the row as it is after the statement: the
// matter's own priority while its latest state has not been tried (pending,
// or deleting, with no failed attempt), else low: a retry, a requeue or a
// resync (docs/DESIGN.md, "Priority").
std::string token_priority_sql();
// The starts the rate limit of `dmm.rate r` allows now, fractional: its
// tokens grown by count per per_ms since updated_at, capped at burst
// (docs/DESIGN.md, "Rate limit"). The claim spends it; the views show it.
std::string rate_available_sql();
// A stored priority number as a class; normal for one this version does not
// know (the column's CHECK allows none).
Priority priority_of(const pqxx::field& number);

// `free_phase` for statements that keep a pending removal: deleting if the
// matter is being removed, else pending.
inline constexpr std::string_view kPhaseKeepingRemoval =
    "CASE WHEN m.deleted_at IS NOT NULL THEN 'deleting' ELSE 'pending' END";

}  // namespace dmm::detail
