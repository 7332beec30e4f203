#include "store/sql.hpp"

#include <fmt/format.h>
#include <pqxx/pqxx>

#include "protocol/vocabulary.hpp"

namespace dmm::detail {

std::string bigint_array(const std::vector<std::int64_t>& values) {
  std::string out = "{";
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (i) out += ',';
    out += std::to_string(values[i]);
  }
  out += '}';
  return out;
}

std::vector<std::int64_t> ids_of(const pqxx::result& rows) {
  std::vector<std::int64_t> ids;
  ids.reserve(rows.size());
  for (const auto& row : rows) ids.push_back(row[0].as<std::int64_t>());
  return ids;
}

std::string replace_all(std::string text, std::string_view from, std::string_view to) {
  for (auto at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size()))
    text.replace(at, from.size(), to);
  return text;
}

std::string new_generation_owed_now(std::string_view free_phase, std::string_view due_at) {
  return "generation = m.generation + 1,\n"
         "    phase = CASE WHEN m.lease_until >= now() THEN m.phase ELSE " +
         std::string(free_phase) +
         " END,\n"
         "    attempts = 0,\n"
         "    last_error = NULL,\n"
         "    due_at = " + std::string(due_at) + ",\n"
         "    updated_at = now()";
}

std::string token_priority_sql() {
  return fmt::format("CASE WHEN m.attempts = 0 AND m.phase IN ('{}', '{}') THEN m.priority ELSE {} END",
                     to_string(Phase::pending), to_string(Phase::deleting), index_of(Priority::low));
}

std::string rate_available_sql() {
  return "least(r.burst::double precision, "
         "r.tokens + greatest(0, extract(epoch FROM now() - r.updated_at)) * 1000 * r.count / r.per_ms)";
}

Priority priority_of(const pqxx::field& number) {
  const auto p = static_cast<Priority>(number.as<int>());
  return is_known(p) ? p : Priority::normal;
}

}  // namespace dmm::detail
