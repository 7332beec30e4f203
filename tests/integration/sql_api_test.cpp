// The SQL API (migration 0009, docs/SQL.md) on real servers: dmm.notify,
// dmm.notify_many and dmm.remove store what Bucket::notify(txn, ...) and
// Bucket::remove store, commit or roll back with the caller, are
// materialized when psql or Python notify, mirror an application table
// through a trigger, refuse bad input with a documented SQLSTATE and
// nothing stored, and a high SQL notify overtakes a normal backlog.
#include <catch2/catch.hpp>

#include <atomic>

#include "harness.hpp"
#include "protocol/vocabulary.hpp"

using namespace dmm_test;

namespace {

// Counts starts, and remembers how many had started when each watched
// matter started.
struct Starts {
  std::atomic<long> count{0};
  std::mutex mu;
  std::map<std::string, long> at;  // guarded by mu
  void start(const std::string& id) {
    const long before = count.fetch_add(1);
    std::lock_guard lock(mu);
    at.try_emplace(id, before);
  }
  std::optional<long> started_at(const std::string& id) {
    std::lock_guard lock(mu);
    auto it = at.find(id);
    return it == at.end() ? std::nullopt : std::optional<long>(it->second);
  }
};

// With finalize(): dmm.remove marks it deleting.
struct Item {
  std::string id;
  int v = 0;
  int work_us = 0;
  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context& ctx) {
    ctx.service<Starts>().start(id);
    if (work_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(work_us));
    return dmm::Result::done();
  }
  void finalize(dmm::Context&) {}
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(Item, id, v, work_us)

// Without finalize(): dmm.remove deletes it.
struct Plain {
  std::string id;
  int v = 0;
  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context&) { return dmm::Result::done(); }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Plain, id, v)

// A fair kind: its key is the org.
struct Fair {
  std::string id;
  std::string org;
  int v = 0;
  std::string identity() const { return id; }
  std::string tenant() const { return org; }
  dmm::Result materialize(dmm::Context&) { return dmm::Result::done(); }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Fair, id, org, v)

// A matter that depends on an Item.
struct Child {
  std::string id;
  std::string parent;
  std::string identity() const { return id; }
  std::vector<dmm::Dependency> dependencies() const { return {{"item", parent}}; }
  dmm::Result materialize(dmm::Context&) { return dmm::Result::done(); }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Child, id, parent)

// An application row mirrored by the trigger (to_jsonb of the row).
struct Order {
  std::string id;
  std::string item;
  int qty = 0;
  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context& ctx) {
    ctx.service<Starts>().start(id + "@" + std::to_string(qty));
    return dmm::Result::done();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Order, id, item, qty)

void exec(const std::string& sql) {
  pqxx::work tx(pg());
  tx.exec(sql);
  tx.commit();
}

std::string quoted(const std::string& s) { return pg().quote(s); }

// Everything the two notify paths decide, one matter a line: without ids and
// times, which differ.
std::string rows_of(const std::string& bucket) {
  pqxx::nontransaction tx(pg());
  std::string out;
  for (const auto& r : tx.exec_params(
           "SELECT m.kind, m.identity, m.state::text, m.generation, m.phase, m.attempts, m.last_error IS NULL, "
           "m.due_at IS NOT NULL, m.priority, coalesce(m.fair_key, '-'), m.deleted_at IS NOT NULL, "
           "k.matter_id IS NOT NULL, coalesce(k.priority, -1), coalesce(k.fair_key, '-'), "
           "coalesce(k.kick_at = m.lease_until, false) "
           "FROM dmm.matter m LEFT JOIN dmm.kick k ON k.matter_id = m.id WHERE m.bucket = $1 "
           "ORDER BY m.kind, m.identity",
           bucket))
    for (pqxx::row::size_type i = 0; i < r.size(); ++i)
      out += std::string(r[i].c_str()) + (i + 1 < r.size() ? " " : "\n");
  return out;
}

// A leased matter, as a worker's claim leaves it.
void lease(const std::string& bucket, const std::string& identity) {
  pqxx::work tx(pg());
  tx.exec_params("UPDATE dmm.matter SET lease_owner = 'test', lease_until = now() + interval '1 minute', "
                 "phase = 'reconciling' WHERE bucket = $1 AND identity = $2",
                 bucket, identity);
  tx.commit();
}

// A matter that failed twice, as a write-back leaves it.
void failed_twice(const std::string& bucket, const std::string& identity) {
  pqxx::work tx(pg());
  tx.exec_params("UPDATE dmm.matter SET attempts = 2, last_error = 'boom', phase = 'retrying' "
                 "WHERE bucket = $1 AND identity = $2",
                 bucket, identity);
  tx.commit();
}

// Runs `binary` with `args` and returns its exit status.
int run(const std::string& binary, const std::vector<std::string>& args) {
  Process p(binary, args);
  auto status = p.wait(30s);
  REQUIRE(status.has_value());
  return *status;
}

int psql(const std::string& sql) {
  return run("/usr/bin/psql", {"-X", "-q", "-v", "ON_ERROR_STOP=1", servers().postgres, "-c", sql});
}

struct SqlFailure {
  std::string sqlstate;
  std::string message;
};

// Runs `sql` in a transaction of its own; what PostgreSQL refused it with.
std::optional<SqlFailure> failure_of(const std::string& sql) {
  try {
    pqxx::work tx(pg());
    tx.exec(sql);
    tx.commit();
  } catch (const pqxx::sql_error& e) {
    return SqlFailure{e.sqlstate(), e.what()};
  }
  return std::nullopt;
}

}  // namespace

TEST_CASE("dmm.notify and dmm.remove store what Bucket::notify(txn, ...) and Bucket::remove store", "[sql]") {
  // Two buckets with the same kinds, no worker: one notified from C++, one
  // from SQL, with the same sequence; their stored rows must be equal.
  const auto cxx_name = unique_name("sqlcmp"), sql_name = unique_name("sqlcmp");
  auto cxx = open_bucket(cxx_name);
  auto sql = open_bucket(sql_name);
  for (auto* b : {&cxx, &sql}) {
    b->register_kind<Item>("item", fast_kind());
    b->register_kind<Plain>("plain", fast_kind());
    b->register_kind<Fair>("fair", fast_kind());
  }
  const auto both = [&](const std::function<void(pqxx::work&)>& via_cxx, const std::string& via_sql) {
    {
      pqxx::work txn(pg());
      via_cxx(txn);
      txn.commit();
    }
    exec(fmt::format(fmt::runtime(via_sql), fmt::arg("b", quoted(sql_name))));
    INFO("after " << via_sql);
    REQUIRE(rows_of(cxx_name) == rows_of(sql_name));
  };
  using P = dmm::Priority;
  // New, identical, changed, with a priority.
  both([&](auto& t) { cxx.notify(t, Item{.id = "a", .v = 1}); },
       R"(SELECT dmm.notify({b}, 'item', 'a', '{{"id": "a", "v": 1, "work_us": 0}}'))");
  both([&](auto& t) { cxx.notify(t, Item{.id = "a", .v = 1}); },
       R"(SELECT dmm.notify({b}, 'item', 'a', '{{"id": "a", "v": 1, "work_us": 0}}'))");
  both([&](auto& t) { cxx.notify(t, Item{.id = "a", .v = 2}, {.priority = P::high}); },
       R"(SELECT dmm.notify({b}, 'item', 'a', '{{"id": "a", "v": 2, "work_us": 0}}', 'high'))");
  both([&](auto& t) { cxx.notify(t, Item{.id = "b", .v = 1}, {.priority = P::low}); },
       R"(SELECT dmm.notify({b}, 'item', 'b', '{{"id": "b", "v": 1, "work_us": 0}}', priority => 'low'))");
  // After failures: identical is a no-op, changed resets attempts and error.
  failed_twice(cxx_name, "a"), failed_twice(sql_name, "a");
  both([&](auto& t) { cxx.notify(t, Item{.id = "a", .v = 2}); },
       R"(SELECT dmm.notify({b}, 'item', 'a', '{{"id": "a", "v": 2, "work_us": 0}}'))");
  both([&](auto& t) { cxx.notify(t, Item{.id = "a", .v = 3}); },
       R"(SELECT dmm.notify({b}, 'item', 'a', '{{"id": "a", "v": 3, "work_us": 0}}'))");
  // A leased matter keeps its phase; its kick is the lease's end.
  lease(cxx_name, "b"), lease(sql_name, "b");
  both([&](auto& t) { cxx.notify(t, Item{.id = "b", .v = 2}); },
       R"(SELECT dmm.notify({b}, 'item', 'b', '{{"id": "b", "v": 2, "work_us": 0}}'))");
  // Remove with finalize (deleting), then a notify cancels it; an identical
  // one after the cancel is a no-op again.
  both([&](auto&) { cxx.remove<Item>("a"); }, "SELECT dmm.remove({b}, 'item', 'a')");
  both([&](auto& t) { cxx.notify(t, Item{.id = "a", .v = 3}); },
       R"(SELECT dmm.notify({b}, 'item', 'a', '{{"id": "a", "v": 3, "work_us": 0}}'))");
  both([&](auto& t) { cxx.notify(t, Item{.id = "a", .v = 3}); },
       R"(SELECT dmm.notify({b}, 'item', 'a', '{{"id": "a", "v": 3, "work_us": 0}}'))");
  // Without finalize: deleted; a notify after it starts again at generation 1.
  both([&](auto& t) { cxx.notify(t, Plain{.id = "p", .v = 1}); },
       R"(SELECT dmm.notify({b}, 'plain', 'p', '{{"id": "p", "v": 1}}'))");
  both([&](auto&) { cxx.remove<Plain>("p"); }, "SELECT dmm.remove({b}, 'plain', 'p')");
  both([&](auto& t) { cxx.notify(t, Plain{.id = "p", .v = 2}); },
       R"(SELECT dmm.notify({b}, 'plain', 'p', '{{"id": "p", "v": 2}}'))");
  // A fairness key, and many at once (the last state of an identity wins).
  both([&](auto& t) { cxx.notify(t, Fair{.id = "f", .org = "acme", .v = 1}, {.priority = P::high}); },
       R"(SELECT dmm.notify({b}, 'fair', 'f', '{{"id": "f", "org": "acme", "v": 1}}', 'high', 'acme'))");
  both([&](auto& t) {
    cxx.notify_many(t, std::vector<Plain>{{.id = "m1", .v = 1}, {.id = "m2", .v = 1}, {.id = "m1", .v = 2}},
                    {.priority = P::low});
  },
       R"(SELECT dmm.notify_many({b}, 'plain', '[{{"identity": "m1", "state": {{"id": "m1", "v": 1}}}},
            {{"identity": "m2", "state": {{"id": "m2", "v": 1}}}},
            {{"identity": "m1", "state": {{"id": "m1", "v": 2}}}}]', 'low'))");
  CHECK(rows_of(sql_name).find("item b {\"v\": 2") != std::string::npos);
  // The SQL side's priority numbers are protocol/vocabulary.hpp's.
  pqxx::nontransaction tx(pg());
  for (const auto& p : dmm::detail::kPriorities)
    CHECK(tx.exec_params1("SELECT dmm.priority_number('k', $1)", std::string(p.name))[0].as<std::size_t>() ==
          dmm::detail::index_of(p.priority));
}

TEST_CASE("notifies from psql and from Python's psycopg2 are materialized by a running worker", "[sql]") {
  const auto name = unique_name("sqlpsql");
  auto bucket = open_bucket(name);
  auto starts = std::make_shared<Starts>();
  bucket.provide(starts);
  bucket.register_kind<Item>("item", fast_kind());
  Runner runner(bucket);
  for (int i = 0; i < 3; ++i)
    REQUIRE(psql(fmt::format(R"(SELECT dmm.notify('{}', 'item', 'psql-{}', '{{"id": "psql-{}", "v": 1}}'))", name, i,
                             i)) == 0);
  REQUIRE(psql(fmt::format(R"(SELECT dmm.notify_many('{}', 'item', '[{{"identity": "many", "state": {{"id": "many"}}}}]'))",
                           name)) == 0);
  const std::string python = R"py(
import json, sys, psycopg2
conn = psycopg2.connect(sys.argv[1])
with conn:
    with conn.cursor() as cur:
        cur.execute("SELECT dmm.notify(%s, 'item', 'py', %s::jsonb)", (sys.argv[2], json.dumps({"id": "py", "v": 7})))
try:
    with conn:
        with conn.cursor() as cur:
            cur.execute("SELECT dmm.notify(%s, 'nope', 'py', '{}')", (sys.argv[2],))
except psycopg2.Error as e:
    print(e.pgcode)
print("ok")
)py";
  Process py("/usr/bin/python3", {"-c", python, servers().postgres, name});
  py.expect_line("DM001", 30s);
  py.expect_line("ok", 30s);
  wait_until([&] { return count_converged(name, "item") == 5; }, 20s, "the SQL notifies to converge",
             [&] { return describe_unconverged(name); });
  for (auto id : {"psql-0", "psql-1", "psql-2", "many", "py"}) CHECK(starts->started_at(id).has_value());
  CHECK(query_matter(name, "item", "py")->state.at("v") == 7);
}

TEST_CASE("a rolled-back dmm.notify leaves nothing", "[sql]") {
  const auto name = unique_name("sqlrb");
  auto bucket = open_bucket(name);
  auto starts = std::make_shared<Starts>();
  bucket.provide(starts);
  bucket.register_kind<Item>("item", fast_kind());
  Runner runner(bucket);
  {
    pqxx::work tx(pg());
    tx.exec(fmt::format(R"(SELECT dmm.notify('{}', 'item', 'gone', '{{"id": "gone"}}'))", name));
    tx.exec(fmt::format(R"(SELECT dmm.notify_many('{}', 'item', '[{{"identity": "gone2", "state": {{}}}}]'))", name));
    REQUIRE(tx.exec("SELECT count(*) FROM dmm.matter WHERE bucket = " + tx.quote(name))[0][0].as<int>() == 2);
    tx.abort();
  }
  CHECK(count_matters(name) == 0);
  CHECK(pqxx::nontransaction(pg()).exec("SELECT count(*) FROM dmm.kick WHERE bucket = " + quoted(name))[0][0].as<int>() ==
        0);
  // The worker is alive: a committed notify after it is worked, the rolled-back ones never.
  exec(fmt::format(R"(SELECT dmm.notify('{}', 'item', 'kept', '{{"id": "kept"}}'))", name));
  wait_until([&] { return count_converged(name, "item") == 1; }, 20s, "the committed notify to converge");
  CHECK(!starts->started_at("gone").has_value());
  CHECK(count_matters(name) == 1);
}

TEST_CASE("a trigger mirrors an application table's inserts, updates and deletes as matters", "[sql]") {
  const auto name = unique_name("shop");
  const auto table = unique_name("orders");
  auto bucket = open_bucket(name);
  auto starts = std::make_shared<Starts>();
  bucket.provide(starts);
  bucket.register_kind<Order>("order", fast_kind());
  // As in docs/SQL.md, with the table's name made unique.
  exec(fmt::format(R"(
CREATE TABLE {t} (id text PRIMARY KEY, item text NOT NULL, qty int NOT NULL);
CREATE FUNCTION {t}_to_matters() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    PERFORM dmm.remove(TG_ARGV[0], TG_ARGV[1], OLD.id);
    RETURN OLD;
  END IF;
  PERFORM dmm.notify(TG_ARGV[0], TG_ARGV[1], NEW.id, to_jsonb(NEW));
  RETURN NEW;
END $$;
CREATE TRIGGER {t}_matters AFTER INSERT OR UPDATE OR DELETE ON {t}
  FOR EACH ROW EXECUTE FUNCTION {t}_to_matters('{b}', 'order');)",
                   fmt::arg("t", table), fmt::arg("b", name)));
  Runner runner(bucket);
  exec(fmt::format("INSERT INTO {} VALUES ('o1', 'apple', 1), ('o2', 'pear', 5)", table));
  wait_until([&] { return count_converged(name, "order") == 2; }, 20s, "the inserted orders to converge");
  CHECK(starts->started_at("o1@1").has_value());
  exec(fmt::format("UPDATE {} SET qty = 2 WHERE id = 'o1'", table));
  wait_until([&] { return starts->started_at("o1@2").has_value(); }, 20s, "the updated order to be materialized");
  wait_until([&] { return count_converged(name, "order") == 2; }, 20s, "the updated order to converge");
  CHECK(query_matter(name, "order", "o1")->generation == 2);
  exec(fmt::format("DELETE FROM {} WHERE id = 'o2'", table));
  CHECK(query_phase(name, "order", "o2") == "(absent)");  // no finalize: deleted in the same transaction
  // A rolled-back write of the application leaves no matter either.
  {
    pqxx::work tx(pg());
    tx.exec(fmt::format("INSERT INTO {} VALUES ('o3', 'fig', 1)", table));
    tx.abort();
  }
  CHECK(count_matters(name, "order") == 1);
  exec(fmt::format("DROP TABLE {t}; DROP FUNCTION {t}_to_matters()", fmt::arg("t", table)));
}

TEST_CASE("bad input to the SQL API gets a documented SQLSTATE naming the object, with nothing stored",
          "[sql][bad-input]") {
  const auto name = unique_name("sqlbad");
  auto bucket = open_bucket(name, [](dmm::BucketOptions& o) { o.max_state_bytes = 200; });
  bucket.register_kind<Item>("item", fast_kind());
  bucket.register_kind<Fair>("fair", fast_kind());
  bucket.register_kind<Child>("child", fast_kind());
  bucket.notify(Item{.id = "parent"});
  bucket.notify(Child{.id = "kid", .parent = "parent"});
  const auto before = stored_snapshot(name);
  const auto b = quoted(name);
  struct Case {
    std::string sql, sqlstate, says;
  };
  const std::vector<Case> cases = {
      {"SELECT dmm.notify('no/such', 'item', 'x', '{}')", "22023", "invalid bucket name 'no/such'"},
      {"SELECT dmm.notify(" + b + ", 'it em', 'x', '{}')", "22023", "invalid kind name 'it em'"},
      {"SELECT dmm.notify(" + b + ", repeat('k', 65), 'x', '{}')", "22023", "invalid kind name"},
      {"SELECT dmm.notify(NULL, 'item', 'x', '{}')", "22004", "bucket name is NULL"},
      {"SELECT dmm.notify('nosuchbucket', 'item', 'x', '{}')", "DM001", "unknown bucket 'nosuchbucket'"},
      {"SELECT dmm.notify(" + b + ", 'never', 'x', '{}')", "DM001", "kind 'never' was never registered"},
      {"SELECT dmm.remove(" + b + ", 'never', 'x')", "DM001", "kind 'never' was never registered"},
      {"SELECT dmm.notify(" + b + ", 'item', '', '{}')", "22023", "kind 'item': identity is empty"},
      {"SELECT dmm.notify(" + b + ", 'item', NULL, '{}')", "22004", "identity is NULL"},
      {"SELECT dmm.notify(" + b + ", 'item', repeat('x', 1025), '{}')", "22023", "is too long (1025 bytes)"},
      // Multibyte: 342 x 3 bytes = 1026 bytes in 342 characters.
      {"SELECT dmm.notify(" + b + ", 'item', repeat('€', 342), '{}')", "22023", "(1026 bytes)"},
      {"SELECT dmm.notify(" + b + ", 'item', 'x', '[1]')", "22023", "identity 'x': state is array, not a JSON object"},
      {"SELECT dmm.notify(" + b + ", 'item', 'x', '\"s\"')", "22023", "state is string"},
      {"SELECT dmm.notify(" + b + ", 'item', 'x', NULL)", "22023", "state is NULL"},
      {"SELECT dmm.notify(" + b + ", 'item', 'x', jsonb_build_object('a', repeat('y', 300)))", "54000",
       "over the bucket's limit of 200"},
      {"SELECT dmm.notify(" + b + ", 'item', 'x', '{}', 'urgent')", "22023", "unknown priority 'urgent'"},
      {"SELECT dmm.notify(" + b + ", 'item', 'x', '{}', NULL)", "22023", "unknown priority 'NULL'"},
      {"SELECT dmm.notify(" + b + ", 'item', 'x', '{}', 'high', '')", "22023", "fair_key is 0 bytes"},
      {"SELECT dmm.notify(" + b + ", 'item', 'x', '{}', 'high', repeat('k', 257))", "22023", "fair_key is 257 bytes"},
      {"SELECT dmm.notify(" + b + ", 'fair', 'x', '{}')", "22023", "the kind has a fairness key and fair_key is NULL"},
      {"SELECT dmm.notify(" + b + ", 'child', 'x', '{}')", "DM002", "declares dependencies()"},
      {"SELECT dmm.remove(" + b + ", 'item', 'parent')", "2BP01", "cannot remove item 'parent': child 'kid'"},
      {"SELECT dmm.remove(" + b + ", 'item', '')", "22023", "identity is empty"},
      {"SELECT dmm.notify_many(" + b + ", 'item', '{}')", "22023", "states is object, not a JSON array"},
      // The first element is valid; the bad second stops both.
      {"SELECT dmm.notify_many(" + b + R"(, 'item', '[{"identity": "ok", "state": {}}, {"state": {}}]'))", "22023",
       "element 2 of states"},
      {"SELECT dmm.notify_many(" + b + R"(, 'item', '[{"identity": "ok", "state": {}}, {"identity": "", "state": {}}]'))",
       "22023", "identity is empty"},
      {"SELECT dmm.notify_many(" + b + R"(, 'item', '[{"identity": "ok", "state": 1}]'))", "22023",
       "state is number"},
      // NUL and bytes that are not UTF-8 cannot reach dmm in a UTF8 database:
      // PostgreSQL refuses them as text.
      {"SELECT dmm.notify(" + b + ", 'item', 'a' || chr(0), '{}')", "54000", "null character not permitted"},
      {"SELECT dmm.notify(" + b + ", 'item', E'a\\u0000b', '{}')", "42601", "invalid Unicode escape value"},
      {"SELECT dmm.notify(" + b + ", 'item', convert_from('\\xff'::bytea, 'UTF8'), '{}')", "22021", "UTF8"},
  };
  for (const auto& c : cases) {
    INFO(c.sql);
    auto failure = failure_of(c.sql);
    REQUIRE(failure.has_value());
    CHECK(failure->sqlstate == c.sqlstate);
    CHECK_THAT(failure->message, Catch::Contains(c.says));
    CHECK(stored_snapshot(name) == before);
  }
  CHECK(pqxx::nontransaction(pg()).exec1("SHOW server_encoding")[0].as<std::string>() == "UTF8");
  // An unknown identity is not an error: nothing to remove.
  CHECK(pqxx::nontransaction(pg()).exec1("SELECT dmm.remove(" + b + ", 'item', 'nobody')")[0].as<bool>() == false);
}

TEST_CASE("a high dmm.notify starts ahead of a normal backlog", "[sql][priority]") {
  constexpr int kBacklog = 10'000, kPrefetch = 64;
  const auto name = unique_name("sqlprio");
  auto bucket = open_bucket(name);
  auto starts = std::make_shared<Starts>();
  bucket.provide(starts);
  auto options = fast_kind(4);
  options.batch = 32;
  options.prefetch = kPrefetch;
  bucket.register_kind<Item>("item", options);
  std::vector<Item> jobs;
  for (int i = 0; i < kBacklog; ++i) jobs.push_back({.id = "bulk-" + std::to_string(i), .work_us = 2000});
  bucket.notify_many(jobs);
  Runner runner(bucket);
  wait_until([&] { return starts->count.load() > 200; }, 60s, "the backlog to be worked");
  const long before = starts->count.load();
  exec(fmt::format(R"(SELECT dmm.notify('{}', 'item', 'urgent', '{{"id": "urgent"}}', 'high'))", name));
  const long returned = starts->count.load();
  wait_until([&] { return starts->started_at("urgent").has_value(); }, 60s, "the high SQL notify to start",
             [&] { return describe_unconverged(name); });
  const long started = *starts->started_at("urgent");
  INFO("notified after " << before << " starts, returned after " << returned << ", started after " << started);
  REQUIRE(started < kBacklog - 2 * kPrefetch);  // the backlog was still there
  CHECK(started - returned <= kPrefetch);
}
