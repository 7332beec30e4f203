// The dependency edges between matters (dmm.dependency, migration 0004):
// stored with every notify of a dependent, walked for cycles, and read when a
// depended-on matter is removed (docs/DESIGN.md, "Dependencies between matters").
#include "store/dependencies.hpp"

#include <nlohmann/json.hpp>

namespace dmm::detail {
namespace {

// Replaces the dependency edges of the notified matters ($3: their
// identities) with $4's: deletes the edges that are gone, inserts the new
// ones (no writes when nothing changed).
constexpr const char* kStoreDependencies = R"sql(
WITH notified AS (
  SELECT jsonb_array_elements_text($3::jsonb) AS identity
), e AS (
  SELECT * FROM jsonb_to_recordset($4::jsonb) AS e(identity text, dep_kind text, dep_identity text)
), dropped AS (
  -- NOT IN, a hashed subplan: dmm's sessions turn hash joins off (connect_pg),
  -- and NOT EXISTS would then compare every stored edge with every new one.
  -- No NULLs on either side (names are validated), so the two mean the same.
  DELETE FROM dmm.dependency d
   WHERE d.bucket = $1 AND d.kind = $2 AND d.identity = ANY (ARRAY(SELECT identity FROM notified))
     AND (d.identity, d.dep_kind, d.dep_identity) NOT IN (SELECT identity, dep_kind, dep_identity FROM e)
)
INSERT INTO dmm.dependency (bucket, kind, identity, dep_kind, dep_identity)
SELECT DISTINCT $1, $2, e.identity, e.dep_kind, e.dep_identity FROM e
ON CONFLICT DO NOTHING
)sql";

// A path of edges from one of the notified matters back to itself, if any
// (kinds have no spaces, so "kind identity" names a matter unambiguously).
// The notified identities are one index scan (= ANY of an array): a
// semi-join (IN) was planned as a scan (docs/DESIGN.md, "Hot path").
constexpr const char* kFindCycle = R"sql(
WITH RECURSIVE walk(kind, identity, path) AS (
  SELECT d.dep_kind, d.dep_identity, ARRAY[d.kind || ' ' || d.identity, d.dep_kind || ' ' || d.dep_identity]
    FROM dmm.dependency d
   WHERE d.bucket = $1 AND d.kind = $2 AND d.identity = ANY (ARRAY(SELECT jsonb_array_elements_text($3::jsonb)))
  UNION ALL
  SELECT d.dep_kind, d.dep_identity, w.path || (d.dep_kind || ' ' || d.dep_identity)
    FROM walk w JOIN dmm.dependency d ON d.bucket = $1 AND d.kind = w.kind AND d.identity = w.identity
   WHERE w.kind || ' ' || w.identity <> ALL (w.path[1:cardinality(w.path) - 1]) AND cardinality(w.path) < 64
)
SELECT array_to_json(path)::text FROM walk WHERE kind || ' ' || identity = path[1] LIMIT 1
)sql";

}  // namespace

std::optional<std::vector<std::string>> store_dependencies(pqxx::transaction_base& txn, const std::string& bucket,
                                                          const std::string& kind,
                                                          const std::vector<MatterDependencies>& matters) {
  auto identities = nlohmann::json::array();
  auto edges = nlohmann::json::array();
  for (const auto& m : matters) {
    identities.push_back(m.identity);
    for (const auto& dep : m.dependencies)
      edges.push_back({{"identity", m.identity}, {"dep_kind", dep.kind}, {"dep_identity", dep.identity}});
  }
  txn.exec_params(kStoreDependencies, bucket, kind, identities.dump(), edges.dump());
  if (edges.empty()) return std::nullopt;
  auto rows = txn.exec_params(kFindCycle, bucket, kind, identities.dump());
  if (rows.empty()) return std::nullopt;
  return nlohmann::json::parse(rows[0][0].as<std::string>()).get<std::vector<std::string>>();
}

std::vector<Dependency> dependents_of(pqxx::transaction_base& txn, const std::string& bucket, const std::string& kind,
                                      std::string_view identity, int limit) {
  auto rows = txn.exec_params(R"sql(
SELECT d.kind, d.identity FROM dmm.dependency d
  JOIN dmm.matter m ON m.bucket = d.bucket AND m.kind = d.kind AND m.identity = d.identity
 WHERE d.bucket = $1 AND d.dep_kind = $2 AND d.dep_identity = $3 AND m.deleted_at IS NULL
 ORDER BY d.kind, d.identity LIMIT $4)sql",
                              bucket, kind, std::string(identity), limit);
  std::vector<Dependency> out;
  for (const auto& row : rows) out.push_back({row[0].as<std::string>(), row[1].as<std::string>()});
  return out;
}

void delete_dependencies(pqxx::transaction_base& txn, const std::string& bucket, const std::string& kind,
                         std::string_view identity) {
  txn.exec_params("DELETE FROM dmm.dependency WHERE bucket = $1 AND kind = $2 AND identity = $3", bucket, kind,
                  std::string(identity));
}

}  // namespace dmm::detail
