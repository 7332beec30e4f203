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
// The second test checks what the write-back's lookups by id must keep: the
// lease fence, with two outcomes of one matter in one batch.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <sstream>

#include "harness.hpp"
#include "probe.hpp"
#include "store/pg.hpp"
#include "store/matters.hpp"

using namespace dmm_test;

namespace {

// Every scan of a table in schema dmm without an index condition, as
// "<node type> on <table> (<path in the plan>)".
void unprobed_scans(const nlohmann::json& node, const std::string& path, std::vector<std::string>& out) {
  const std::string type = node.value("Node Type", "");
  const std::string table = node.value("Relation Name", "");
  const std::string subplan = node.value("Subplan Name", "");
  const std::string where = path + "/" + type + (subplan.empty() ? "" : " [" + subplan + "]");
  const bool scan = type == "Seq Scan" || type == "Index Scan" || type == "Index Only Scan";
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
    bucket.register_kind<dmm_test::Probe>("noop", fast_kind());  // never run
  }
  {
    // Empty and vacuumed: reltuples 0 and no pages, what the planner reads as
    // "empty" (never-vacuumed tables get a default of 10 pages instead).
    auto admin = connect_pg(db.url());
    pqxx::nontransaction tx(admin);
    for (const char* table : {"dmm.matter", "dmm.kick", "dmm.attempt", "dmm.dependency", "dmm.slot", "dmm.rate"})
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
      {"dmm_claim_limited", "('{1,2,3}', 'b', 'noop', 'w', 3000, 5, true)"},
      {"dmm_claim_fair", "('{1,2,3}', 'b', 'noop', 'w', 3000, 0, false, 'tenant-1', 1)"},
      {"dmm_release_slots", "('b', 'noop', '{1,2}', '{1,1}')"},
      {"dmm_write_back",
       "('{1,2}', '{1,1}', '{1,1}', '{1,5}', '{0,0}', '{1,1}', '{1,1}', '{1,1}', '{\"1\": {\"state\": {}}}', 500, "
       "10, 'b', 'w')"},
      {"dmm_heartbeat", "('{1,2}', '{1,1}', 3000)"},
      {"dmm_heartbeat_with_slots", "('{1,2}', '{1,1}', 3000)"},
      {"dmm_sweep", "('b', 'noop', 1000, 500, 2)"},
      {"dmm_next_kick", "('b', 'noop', 1)"},
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

// The write-back finds each outcome by a binary search in its id-sorted
// arrays. Two outcomes of one matter in one batch happen when an attempt that
// lost its lease and the next attempt's are written back together: only the
// outcome of the current lease may count, in whichever order they come.
TEST_CASE("a write-back counts only the outcome of the current lease, in any order and next to other matters",
          "[notify][plans]") {
  const std::string name = unique_name("fence");
  auto bucket = open_bucket(name);
  bucket.register_kind<dmm_test::Probe>("probe", fast_kind());
  for (const char* id : {"a", "b", "c"}) bucket.notify(dmm_test::Probe{.id = id, .seq = 1});
  const auto id_of = [&](const std::string& identity) {
    pqxx::nontransaction tx(pg());
    return tx.exec_params1("SELECT id FROM dmm.matter WHERE bucket = $1 AND identity = $2", name, identity)[0]
        .as<std::int64_t>();
  };
  auto conn = dmm::detail::connect_pg(servers().postgres, "checking the write-back fence");
  dmm::detail::prepare_statements(*conn);
  const std::vector<std::int64_t> ids = {id_of("a"), id_of("b"), id_of("c")};
  auto first = dmm::detail::claim(*conn, name, "probe", ids, "w1", std::chrono::seconds(30)).claimed;
  REQUIRE(first.size() == 3);
  // "b"'s lease runs out and another worker takes it: a new epoch.
  {
    pqxx::nontransaction tx(pg());
    tx.exec_params("UPDATE dmm.matter SET lease_until = now() - interval '1 s' WHERE id = $1", ids[1]);
  }
  auto second = dmm::detail::claim(*conn, name, "probe", {ids[1]}, "w2", std::chrono::seconds(30)).claimed;
  REQUIRE(second.size() == 1);
  REQUIRE(second[0].epoch > first[1].epoch);

  const auto outcome = [](const dmm::detail::Claimed& c, const char* seq) {
    dmm::detail::Outcome o;
    o.id = c.id, o.epoch = c.epoch, o.generation = c.generation;
    o.kind = dmm::detail::OutcomeKind::done;
    o.state = nlohmann::json{{"id", c.identity}, {"seq", std::stol(seq)}};
    return o;
  };
  SECTION("the stale outcome first") {
    dmm::detail::write_back(*conn, {outcome(first[1], "7"), outcome(second[0], "8"), outcome(first[0], "2")},
                            std::chrono::milliseconds(500), name, {name, "w", 10});
  }
  SECTION("the stale outcome last") {
    dmm::detail::write_back(*conn, {outcome(first[0], "2"), outcome(second[0], "8"), outcome(first[1], "7")},
                            std::chrono::milliseconds(500), name, {name, "w", 10});
  }
  CHECK(query_matter(name, "probe", "a")->state["seq"] == 2);
  CHECK(query_matter(name, "probe", "a")->phase == "ready");
  CHECK(query_matter(name, "probe", "b")->state["seq"] == 8);
  CHECK(query_matter(name, "probe", "b")->phase == "ready");
  // Not written back: still leased to w1.
  CHECK(query_matter(name, "probe", "c")->lease_owner == "w1");
  CHECK(query_matter(name, "probe", "c")->state["seq"] == 1);
}
