// Tokens are lossy: with every token gone, the sweeper re-sends them and every
// matter still converges.
#include <catch2/catch.hpp>

#include "harness.hpp"

using namespace dmm_test;

namespace {

struct Item {
  std::string id;
  long version = 0;
  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context&) { return dmm::Result::done(); }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Item, id, version)

std::vector<Item> items(const std::string& prefix, int n, long version) {
  std::vector<Item> out;
  for (int i = 0; i < n; ++i) out.push_back({.id = prefix + std::to_string(i), .version = version});
  return out;
}

}  // namespace

TEST_CASE("matters converge after their tokens were purged from the stream", "[notify]") {
  const std::string name = unique_name("lost");
  auto bucket = open_bucket(name);
  bucket.register_kind<Item>("item", fast_kind(8));

  auto batch = items("item-", 500, 1);
  for (int i = 0; i < 50; ++i) bucket.notify(batch[static_cast<std::size_t>(i)]);  // one by one
  bucket.notify_many(std::vector<Item>(batch.begin() + 50, batch.end()));      // and in bulk
  REQUIRE(count_matters(name, "item") == 500);

  // Tokens are published asynchronously after notify returns: wait until all
  // are in the stream (one per single notify, one per up to 64 matters of the
  // bulk notify: 50 + 8), then lose them all.
  Nats nats(servers().nats);
  wait_until([&] { return nats.stream_messages("DMM_" + name) == 58; }, 10s, "58 tokens in the stream");
  nats.purge_stream("DMM_" + name);
  REQUIRE(nats.stream_messages("DMM_" + name) == 0);

  Runner runner(bucket);
  wait_until([&] { return count_converged(name, "item") == 500; }, 30s, "all 500 matters to become ready",
             [&] { return describe_unconverged(name); });
  runner.stop();
}

TEST_CASE("matters converge when the stream is purged while workers run", "[notify]") {
  const std::string name = unique_name("purged");
  auto bucket = open_bucket(name);
  bucket.register_kind<Item>("item", fast_kind(8));
  Runner runner(bucket);
  Nats nats(servers().nats);

  for (long round = 1; round <= 3; ++round) {
    bucket.notify_many(items("item-", 300, round));
    nats.purge_stream("DMM_" + name);
  }
  wait_until([&] { return count_converged(name, "item") == 300; }, 30s, "all 300 matters to become ready",
             [&] { return describe_unconverged(name); });
  CHECK(count_matters(name, "item", "(state->>'version')::int = 3") == 300);
  runner.stop();
}

// dmm.kick (migration 0005): a kick that owes nothing is deleted by the
// sweeper, and a leased matter's kick waits for the lease's end, when the
// matter is taken over (its holder, here a fake one, never wrote back).
TEST_CASE("the sweeper deletes kicks that owe nothing and re-kicks a leased matter when its lease ends", "[notify]") {
  const std::string name = unique_name("kicks");
  auto bucket = open_bucket(name);
  bucket.register_kind<Item>("item", fast_kind());
  bucket.notify(Item{.id = "ready", .version = 1});
  bucket.notify(Item{.id = "held", .version = 1});
  Runner runner(bucket);
  wait_until([&] { return count_converged(name, "item") == 2; }, 20s, "both matters to become ready",
             [&] { return describe_unconverged(name); });
  auto kicks = [&](const std::string& where) {
    return pqxx::nontransaction(pg())
        .exec_params1("SELECT count(*) FROM dmm.kick WHERE bucket = $1 AND " + where, name)[0]
        .as<long>();
  };
  REQUIRE(kicks("true") == 0);  // nothing owed, no kicks

  {
    pqxx::work tx(pg());
    // A kick for a ready matter and one for a matter that does not exist.
    tx.exec_params("INSERT INTO dmm.kick SELECT id, bucket, kind, now() FROM dmm.matter "
                   "WHERE bucket = $1 AND identity = 'ready'",
                   name);
    tx.exec_params("INSERT INTO dmm.kick VALUES (-1 - (random() * 1e12)::bigint, $1, 'item', now())", name);
    // "held": a new generation, leased for 3 s by a worker that is gone.
    tx.exec_params("UPDATE dmm.matter SET generation = generation + 1, phase = 'reconciling', due_at = now(), "
                   "lease_owner = 'gone', lease_until = now() + interval '3 s', leased_at = now(), "
                   "lease_epoch = lease_epoch + 1 WHERE bucket = $1 AND identity = 'held'",
                   name);
    tx.exec_params("INSERT INTO dmm.kick SELECT id, bucket, kind, now() FROM dmm.matter "
                   "WHERE bucket = $1 AND identity = 'held'",
                   name);
    tx.commit();
  }
  const auto leased_at = std::chrono::steady_clock::now();
  wait_until([&] { return kicks("matter_id NOT IN (SELECT id FROM dmm.matter WHERE identity = 'held')") == 0; },
             10s, "the kicks that owe nothing to be deleted");
  // The held matter's kick was re-armed to its lease's end, not sent now.
  CHECK(kicks("kick_at >= (SELECT lease_until FROM dmm.matter WHERE bucket = $1 AND identity = 'held')") == 1);
  wait_until([&] { return count_converged(name, "item") == 2; }, 20s, "the held matter to be taken over",
             [&] { return describe_unconverged(name); });
  CHECK(std::chrono::steady_clock::now() - leased_at >= 2500ms);  // not before the lease ended (3 s, less slack)
  CHECK(kicks("true") == 0);
}

// Migration 0005 moved kick_at out of dmm.matter. A database migrated before
// it (rebuilt here from the current schema: the column and its partial index
// back, dmm.kick gone, and every later migration undone with its row) with a
// matter owed work whose token was lost must still converge after the
// upgrade: the migration gives the matter its kick, and the sweeper sends the
// token. Each later migration is undone here too.
TEST_CASE("a matter owed work before migration 0005 still converges after it", "[notify]") {
  const ScratchDatabase db("dmm_up");
  const std::string name = unique_name("upgrade");
  {
    auto bucket = open_bucket(name, [&](dmm::BucketOptions& o) { o.postgres = db.url(); });
    bucket.register_kind<Item>("item", fast_kind());
    bucket.notify(Item{.id = "owed", .version = 1});
  }
  {
    pqxx::connection conn(db.url());
    pqxx::work tx(conn);
    tx.exec("ALTER TABLE dmm.matter ADD COLUMN kick_at timestamptz");
    tx.exec("UPDATE dmm.matter m SET kick_at = k.kick_at FROM dmm.kick k WHERE k.matter_id = m.id");
    tx.exec("CREATE INDEX matter_kick ON dmm.matter (bucket, kind, kick_at) WHERE kick_at IS NOT NULL");
    tx.exec("DROP TABLE dmm.kick");
    tx.exec("ALTER TABLE dmm.matter DROP COLUMN priority");  // 0006
    tx.exec("DROP TABLE dmm.slot, dmm.rate");                 // 0007
    tx.exec("ALTER TABLE dmm.matter DROP COLUMN fair_key");   // 0008
    tx.exec("DROP FUNCTION dmm.notify, dmm.notify_many, dmm.remove, dmm.upsert_rows, dmm.notify_target, "
            "dmm.check_matter, dmm.priority_number, dmm.check_identity, dmm.registered_kind, dmm.check_utf8, "
            "dmm.check_name; DROP TABLE dmm.kind");  // 0009
    tx.exec("ALTER TABLE dmm.attempt SET UNLOGGED");  // 0010
    tx.exec("DELETE FROM dmm.schema_migrations WHERE version >= 5");
    tx.commit();
  }
  Nats nats(servers().nats);
  wait_until([&] { return nats.stream_messages("DMM_" + name) == 1; }, 10s, "the token in the stream");
  nats.purge_stream("DMM_" + name);  // lost: only the kick can bring the matter back

  auto bucket = open_bucket(name, [&](dmm::BucketOptions& o) { o.postgres = db.url(); });  // migrates
  bucket.register_kind<Item>("item", fast_kind());
  {
    pqxx::connection conn(db.url());
    pqxx::nontransaction tx(conn);
    CHECK(tx.exec1("SELECT count(*) FROM dmm.kick k JOIN dmm.matter m ON m.id = k.matter_id "
                   "WHERE m.identity = 'owed'")[0]
              .as<int>() == 1);
    CHECK(tx.exec1("SELECT count(*) FROM information_schema.columns WHERE table_schema = 'dmm' "
                   "AND table_name = 'matter' AND column_name = 'kick_at'")[0]
              .as<int>() == 0);
  }
  Runner runner(bucket);
  wait_until(
      [&] {
        pqxx::connection conn(db.url());
        return pqxx::nontransaction(conn)
                   .exec_params1("SELECT count(*) FROM dmm.matter WHERE bucket = $1 AND phase = 'ready' "
                                 "AND materialized_generation = generation",
                                 name)[0]
                   .as<int>() == 1;
      },
      20s, "the owed matter to become ready");
}
