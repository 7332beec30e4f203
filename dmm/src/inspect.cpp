// Read-only views of matters for debugging tools (example debug, dmmctl).
#include "dmm/inspect.hpp"

#include <fmt/format.h>
#include <pqxx/pqxx>

#include "dmm/errors.hpp"
#include "dmm/url.hpp"

namespace dmm {

std::vector<MatterStatus> inspect(const InspectQuery& q) {
  std::unique_ptr<pqxx::connection> conn;
  try {
    conn = std::make_unique<pqxx::connection>(q.postgres);
  } catch (const std::exception& e) {
    throw ConnectionError(fmt::format("cannot connect to PostgreSQL at {}: {}", mask_url(q.postgres),
                                      mask_url(e.what())));
  }
  pqxx::read_transaction tx(*conn);
  // An expired lease is shown as no lease: nobody holds it any more.
  auto rows = tx.exec_params(R"sql(
SELECT id, kind, identity, phase, generation, materialized_generation, attempts,
       coalesce(last_error, ''),
       coalesce(to_char(due_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'), ''),
       CASE WHEN lease_until > now() THEN coalesce(lease_owner, '') ELSE '' END,
       CASE WHEN lease_until > now()
            THEN to_char(lease_until AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') ELSE '' END,
       to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
       state::text
  FROM dmm.matter
 WHERE bucket = $1 AND ($2::text IS NULL OR kind = $2) AND ($3::text IS NULL OR identity = $3)
 ORDER BY kind, identity
 LIMIT $4)sql",
                             q.bucket, q.kind, q.identity, q.limit);
  std::vector<MatterStatus> out;
  out.reserve(rows.size());
  for (const auto& r : rows) {
    MatterStatus m;
    m.id = r[0].as<std::int64_t>();
    m.kind = r[1].as<std::string>();
    m.identity = r[2].as<std::string>();
    m.phase = r[3].as<std::string>();
    m.generation = r[4].as<std::int64_t>();
    m.materialized_generation = r[5].as<std::int64_t>();
    m.attempts = r[6].as<int>();
    m.last_error = r[7].as<std::string>();
    m.due_at = r[8].as<std::string>();
    m.lease_owner = r[9].as<std::string>();
    m.lease_until = r[10].as<std::string>();
    m.updated_at = r[11].as<std::string>();
    m.state = r[12].as<std::string>();
    out.push_back(std::move(m));
  }
  return out;
}

std::string explain(const MatterStatus& m) {
  const std::string error = m.last_error.empty() ? "" : fmt::format(" (last error: {})", m.last_error);
  if (m.phase == "ready" && m.due_at.empty())
    return fmt::format("ready: generation {} is materialized", m.materialized_generation);
  if (m.phase == "ready") return fmt::format("ready; materializes again at {} (requeue_after)", m.due_at);
  if (m.phase == "failed")
    return fmt::format("failed terminally after {} attempt(s){}; waiting for a new state or a retry", m.attempts,
                       error);
  if (!m.lease_owner.empty())
    return fmt::format("{} by worker {} (lease until {}), generation {}", m.phase == "deleting" ? "finalizing" : "materializing",
                       m.lease_owner, m.lease_until, m.generation);
  if (m.phase == "retrying")
    return fmt::format("waiting for backoff until {} after {} failure(s){}", m.due_at, m.attempts, error);
  if (m.phase == "deleting") return fmt::format("removed; waiting for a worker to finalize it{}", error);
  return fmt::format("pending: generation {} waits for a worker (due {}); no worker of kind '{}' has taken it yet",
                     m.generation, m.due_at.empty() ? "now" : m.due_at, m.kind);
}

}  // namespace dmm
