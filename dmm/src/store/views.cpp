// The read-only queries behind dmm/inspect.hpp (dmmctl, example debug, the
// web view): they never lock or change anything.
#include <algorithm>
#include <fmt/format.h>
#include <sstream>
#include <pqxx/pqxx>

#include "dmm/errors.hpp"
#include "dmm/inspect.hpp"
#include "dmm/url.hpp"
#include "protocol/vocabulary.hpp"
#include "store/pg.hpp"
#include "store/sql.hpp"
#include "store/views.hpp"

namespace dmm {
namespace detail {

std::unique_ptr<pqxx::connection> connect_tool(const std::string& url) {
  try {
    return std::make_unique<pqxx::connection>(url);
  } catch (const std::exception& e) {
    throw ConnectionError(
        fmt::format("cannot connect to PostgreSQL at {}: {}", shown_postgres(url), mask_url(e.what())));
  }
}

}  // namespace detail

namespace {

using detail::connect_tool;

// UTC ISO 8601 with milliseconds; '' for NULL.
std::string iso(const char* column) {
  return fmt::format(R"(coalesce(to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'), ''))", column);
}

// The WHERE clause every query shares: $1 bucket, $2 kind, $3 identity, $4 phase,
// $5 identity prefix.
constexpr const char* kMatch =
    "bucket = $1 AND ($2::text IS NULL OR kind = $2) AND ($3::text IS NULL OR identity = $3) "
    "AND ($4::text IS NULL OR phase = $4) AND ($5::text IS NULL OR starts_with(identity, $5))";

// A sort key for natural order: each run of digits becomes its length (4
// digits: identities are at most 1024 bytes) and then the digits, so that
// byte order (COLLATE "C") compares the runs as numbers: player-2 < player-10.
constexpr const char* kNaturalKey =
    "(SELECT string_agg(CASE WHEN p[1] ~ '^[0-9]' THEN lpad(length(p[1])::text, 4, '0') || p[1] ELSE p[1] END, '' "
    "ORDER BY n) FROM regexp_matches(identity, '[0-9]+|[^0-9]+', 'g') WITH ORDINALITY AS t(p, n)) COLLATE \"C\"";

// A dmm.rate row `r` as text: count, per_ms, burst and the starts it allows
// now (the claim's formula).
std::string rate_text_sql() {
  return "r.count || ' ' || r.per_ms || ' ' || r.burst || ' ' || " + detail::rate_available_sql();
}

RateState parse_rate(const std::string& text) {
  RateState rate;
  std::istringstream in(text);
  in >> rate.count >> rate.per_ms >> rate.burst >> rate.available;
  return in ? rate : RateState{};
}

MatterStatus status_of(const pqxx::row& r) {
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
  m.kick_at = r[9].as<std::string>();
  m.lease_owner = r[10].as<std::string>();
  m.lease_until = r[11].as<std::string>();
  m.leased_at = r[12].as<std::string>();
  m.created_at = r[13].as<std::string>();
  m.updated_at = r[14].as<std::string>();
  m.removing = r[15].as<bool>();
  m.age_ms = r[16].as<std::int64_t>();
  if (!r[17].is_null()) m.due_in_ms = r[17].as<std::int64_t>();
  m.state = r[18].as<std::string>();
  m.slots = r[19].as<std::int64_t>();
  m.slots_in_use = r[20].as<std::int64_t>();
  m.rate = parse_rate(r[21].as<std::string>());
  return m;
}

}  // namespace

std::vector<MatterStatus> inspect(const InspectQuery& q) {
  auto conn = connect_tool(q.postgres);
  pqxx::read_transaction tx(*conn);
  // An expired lease is shown as no lease: nobody holds it any more.
  const auto sql = fmt::format(R"sql(
SELECT id, kind, identity, phase, generation, materialized_generation, attempts,
       coalesce(last_error, ''), {}, {},
       CASE WHEN lease_until > now() THEN coalesce(lease_owner, '') ELSE '' END,
       CASE WHEN lease_until > now() THEN {} ELSE '' END,
       CASE WHEN lease_until > now() THEN {} ELSE '' END,
       {}, {}, deleted_at IS NOT NULL,
       (extract(epoch FROM now() - created_at) * 1000)::bigint,
       (extract(epoch FROM due_at - now()) * 1000)::bigint,
       state::text,
       (SELECT count(*) FROM dmm.slot s WHERE s.bucket = matter.bucket AND s.kind = matter.kind),
       (SELECT count(*) FROM dmm.slot s WHERE s.bucket = matter.bucket AND s.kind = matter.kind
           AND s.held_until > now()),
       coalesce((SELECT {} FROM dmm.rate r WHERE r.bucket = matter.bucket AND r.kind = matter.kind), '')
  FROM dmm.matter
 WHERE {}
 ORDER BY kind, {}identity, id
 LIMIT $6 OFFSET $7)sql",
                               iso("due_at"), iso("(SELECT k.kick_at FROM dmm.kick k WHERE k.matter_id = matter.id)"),
                               iso("lease_until"), iso("leased_at"), iso("created_at"), iso("updated_at"),
                               rate_text_sql(), kMatch, q.natural_order ? std::string(kNaturalKey) + ", " : "");
  auto rows = tx.exec_params(sql, q.bucket, q.kind, q.identity, q.phase, q.identity_prefix, q.limit,
                             std::max(q.offset, 0));
  std::vector<MatterStatus> out;
  out.reserve(rows.size());
  for (const auto& r : rows) out.push_back(status_of(r));
  return out;
}

std::int64_t count_matters(const InspectQuery& q) {
  auto conn = connect_tool(q.postgres);
  pqxx::read_transaction tx(*conn);
  return tx.exec_params(fmt::format("SELECT count(*) FROM dmm.matter WHERE {}", kMatch), q.bucket, q.kind,
                        q.identity, q.phase, q.identity_prefix)[0][0]
      .as<std::int64_t>();
}

std::map<std::string, std::int64_t> phase_counts(const std::string& postgres, const std::string& bucket) {
  auto conn = connect_tool(postgres);
  pqxx::read_transaction tx(*conn);
  std::map<std::string, std::int64_t> out;
  for (const auto& r : tx.exec_params("SELECT phase, count(*) FROM dmm.matter WHERE bucket = $1 GROUP BY phase", bucket))
    out[r[0].as<std::string>()] = r[1].as<std::int64_t>();
  return out;
}

std::vector<std::string> list_buckets(const std::string& postgres) {
  auto conn = connect_tool(postgres);
  pqxx::read_transaction tx(*conn);
  std::vector<std::string> out;
  for (const auto& r : tx.exec("SELECT DISTINCT bucket FROM dmm.matter ORDER BY bucket"))
    out.push_back(r[0].as<std::string>());
  return out;
}

std::vector<AttemptRecord> attempt_history(const std::string& postgres, std::int64_t matter_id, int limit) {
  auto conn = connect_tool(postgres);
  pqxx::read_transaction tx(*conn);
  auto rows = tx.exec_params(fmt::format(R"sql(
SELECT seq, generation, attempt, {}, duration_ms, outcome, coalesce(error, ''), worker
  FROM dmm.attempt WHERE matter_id = $1 ORDER BY seq DESC LIMIT $2)sql",
                                         iso("started_at")),
                             matter_id, limit);
  std::vector<AttemptRecord> out;
  for (const auto& r : rows)
    out.push_back({r[0].as<std::int64_t>(), r[1].as<std::int64_t>(), r[2].as<int>(), r[3].as<std::string>(),
                   r[4].as<std::int64_t>(), r[5].as<std::string>(), r[6].as<std::string>(), r[7].as<std::string>()});
  return out;
}

std::vector<KindStats> kind_stats(const std::string& postgres, const std::string& bucket) {
  auto conn = connect_tool(postgres);
  pqxx::read_transaction tx(*conn);
  // Columns 8.. count the waiting matters of each class, in kPriorities order.
  std::string by_class;
  for (std::size_t i = 0; i < detail::kPriorities.size(); ++i)
    by_class += fmt::format(",\n       count(*) FILTER (WHERE waiting AND priority = {})", i);
  auto rows = tx.exec_params(fmt::format(R"sql(
WITH s AS (
  SELECT m.kind, m.phase, m.due_at, (m.lease_until IS NOT NULL AND m.lease_until >= now()) AS leased,
         m.due_at <= now() AND NOT (m.lease_until IS NOT NULL AND m.lease_until >= now()) AS waiting,
         m.phase = '{}' AND starts_with(coalesce(m.last_error, ''), $2) AS gave_up, {} AS priority
    FROM dmm.matter m WHERE m.bucket = $1
)
SELECT kind, phase, count(*),
       count(*) FILTER (WHERE waiting),
       count(*) FILTER (WHERE leased),
       {},
       coalesce((extract(epoch FROM now() - min(due_at) FILTER (WHERE waiting)) * 1000)::bigint, 0),
       count(*) FILTER (WHERE gave_up){}
  FROM s GROUP BY kind, phase ORDER BY kind, phase)sql",
                                         detail::to_string(detail::Phase::failed), detail::token_priority_sql(),
                                         iso("min(due_at) FILTER (WHERE waiting)"), by_class),
                             bucket, std::string(detail::kGaveUpPrefix));
  std::vector<KindStats> out;
  for (const auto& r : rows) {
    const auto kind = r[0].as<std::string>();
    if (out.empty() || out.back().kind != kind) out.push_back(KindStats{.kind = kind});
    auto& k = out.back();
    const auto n = r[2].as<std::int64_t>();
    k.phases[r[1].as<std::string>()] = n;
    k.total += n;
    k.due_now += r[3].as<std::int64_t>();
    k.in_flight += r[4].as<std::int64_t>();
    k.gave_up += r[7].as<std::int64_t>();
    for (std::size_t i = 0; i < detail::kPriorities.size(); ++i)
      if (const auto due = r[static_cast<int>(8 + i)].as<std::int64_t>(); due > 0)
        k.due_by_priority[detail::kPriorities[i].name] += due;
    const auto oldest = r[5].as<std::string>();
    const auto age = r[6].as<std::int64_t>();
    if (!oldest.empty() && (k.oldest_due.empty() || oldest < k.oldest_due)) {
      k.oldest_due = oldest;
      k.oldest_due_age_ms = age;
    }
  }
  for (const auto& r : tx.exec_params(fmt::format("SELECT kind, {} FROM dmm.rate r WHERE bucket = $1", rate_text_sql()),
                                      bucket))
    for (auto& k : out)
      if (k.kind == r[0].as<std::string>()) k.rate = parse_rate(r[1].as<std::string>());
  for (const auto& r : tx.exec_params("SELECT kind, count(*), count(*) FILTER (WHERE held_until > now()) "
                                      "FROM dmm.slot WHERE bucket = $1 GROUP BY kind",
                                      bucket))
    for (auto& k : out)
      if (k.kind == r[0].as<std::string>()) {
        k.slots = r[1].as<std::int64_t>();
        k.slots_in_use = r[2].as<std::int64_t>();
      }
  return out;
}

}  // namespace dmm
