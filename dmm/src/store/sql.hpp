// Helpers for building statements and their parameters (libpqxx 6.4 cannot
// bind std::vector, so arrays travel as text literals), reading results, and
// the SQL that several statements share, written once.
#pragma once

#include <cstdint>
#include <pqxx/result>
#include <string>
#include <string_view>
#include <vector>

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

// `free_phase` for statements that keep a pending removal: deleting if the
// matter is being removed, else pending.
inline constexpr std::string_view kPhaseKeepingRemoval =
    "CASE WHEN m.deleted_at IS NOT NULL THEN 'deleting' ELSE 'pending' END";

}  // namespace dmm::detail
