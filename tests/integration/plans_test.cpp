// dmm's prepared statements keep one generic plan per connection
// (connect_pg: plan_cache_mode = force_generic_plan), made from the statistics
// of the moment it was planned. A plan made while a table looked empty (just
// created, or vacuumed after it drained, as dmm.kick routinely is) must still
// be index probes when the table holds millions of rows: a join that scans a
// whole table once per input row turned one sweep of 100,000 due kicks into
// 20 s at 100% CPU, during which the write-back waited for its row locks
// (bench/results.md, round 5).
//
// So the statements are written in shapes whose only plan is a probe per row
// (LATERAL lookups, `= ANY (ARRAY(...))`, correlated subqueries), and this test
// plans each of them on empty, freshly vacuumed tables, the worst statistics
// there are, and checks that every scan of a dmm table has an index condition.
#include <catch2/catch.hpp>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "harness.hpp"
#include "pg.hpp"
#include "store.hpp"

using namespace dmm_test;

namespace {

struct Noop {
  std::string id;
  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context&) { return dmm::Result::done(); }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Noop, id)

// Every scan of a table in schema dmm without an index condition, as
// "<node type> on <table> (<path in the plan>)".
void unprobed_scans(const nlohmann::json& node, const std::string& path, std::vector<std::string>& out) {
  const std::string type = node.value("Node Type", "");
  const std::string table = node.value("Relation Name", "");
  const std::string where = path + "/" + type + (node.contains("Subplan Name") ? " [" + node.value("Subplan Name", "") + "]" : "");
  const bool scan = type == "Seq Scan" || type == "Index Scan" || type == "Index Only Scan" || type == "Bitmap Index Scan";
  if (scan && node.value("Schema", "") == "dmm" && !node.contains("Index Cond"))
    out.push_back(type + " on dmm." + table + " without an index condition (" + where + ")");
  if (node.contains("Plans"))
    for (const auto& child : node["Plans"]) unprobed_scans(child, where, out);
}

}  // namespace

TEST_CASE("every statement of the hot path is planned as index probes, even on tables that looked empty",
          "[notify][plans]") {
  ScratchDatabase db("plans");
  {
    // Opening a bucket creates the schema (migrations).
    auto bucket = open_bucket(unique_name("plans"), [&](dmm::BucketOptions& o) { o.postgres = db.url(); });
    bucket.register_kind<Noop>("noop", fast_kind());
  }
  {
    // Empty and vacuumed: reltuples 0 and no pages, what the planner reads as
    // "empty" (never-vacuumed tables get a default of 10 pages instead).
    auto admin = connect_pg(db.url());
    pqxx::nontransaction tx(admin);
    for (const char* table : {"dmm.matter", "dmm.kick", "dmm.attempt", "dmm.dependency"})
      tx.exec(std::string("VACUUM ANALYZE ") + table);
  }

  auto conn = dmm::detail::connect_pg(db.url(), "checking plans");
  dmm::detail::prepare_statements(*conn);
  // Arguments of the right types; the plans are generic, so their values do
  // not matter. Not here: dmm_prune_history, which scans dmm.attempt by
  // design (no index on age; a bucket is pruned every few minutes).
  const std::vector<std::pair<std::string, std::string>> statements = {
      {"dmm_upsert", "('b', 'noop', '[{\"identity\": \"a\", \"state\": {}}]', 500)"},
      {"dmm_claim", "('{1,2,3}', 'b', 'noop', 'w', 3000)"},
      {"dmm_write_back",
       "('{1,2}', '{1,1}', '{1,1}', '{1,5}', '{0,0}', '{1,1}', '{1,1}', '{1,1}', '{\"1\": {\"state\": {}}}', 500, "
       "10, 'b', 'w')"},
      {"dmm_heartbeat", "('{1,2}', '{1,1}', 3000)"},
      {"dmm_sweep", "('b', 'noop', 1000, 500)"},
      {"dmm_next_kick", "('b', 'noop')"},
  };
  for (const auto& [name, args] : statements) conn->prepare_now(name);  // libpqxx prepares lazily
  pqxx::nontransaction tx(*conn);
  for (const auto& [name, args] : statements) {
    INFO(name);
    auto rows = tx.exec("EXPLAIN (VERBOSE, FORMAT JSON) EXECUTE " + name + args);
    REQUIRE(rows.size() == 1);
    const auto plan = nlohmann::json::parse(rows[0][0].as<std::string>());
    std::vector<std::string> bad;
    unprobed_scans(plan.at(0).at("Plan"), "", bad);
    std::ostringstream found;
    for (const auto& b : bad) found << "\n  " << b;
    INFO("plan: " << plan.dump(1));
    CHECK(found.str() == "");
  }
}
