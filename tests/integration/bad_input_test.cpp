// Bad input gets a clear error naming the object, and nothing already stored
// is lost: bad names, identities and states, unknown kinds, undecodable rows,
// unreachable servers, edited migrations.
#include <catch2/catch.hpp>

#include "harness.hpp"

using namespace dmm_test;
using namespace std::string_literals;

namespace {

struct Song {
  std::string id;
  std::string title;
  long plays = 0;
  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context& ctx) {
    ctx.service<Recorder>().record(id, {.value = title, .attempt = ctx.attempt()});
    return dmm::Result::done();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Song, id, title, plays)

// The same kind name as Song in another process's build, but with `plays` as
// a string: what a bad deploy or a hand-edited row looks like.
struct SongV2 {
  std::string id;
  std::string title;
  std::string plays;
  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context&) { return dmm::Result::done(); }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(SongV2, id, title, plays)

// Never registered anywhere.
struct Unregistered {
  std::string id;
  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context&) { return dmm::Result::done(); }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Unregistered, id)

// Everything stored for `bucket` in the database of `url` (default: the test
// database).
std::string bucket_snapshot(const std::string& bucket, const std::string& url = "") {
  if (url.empty()) return stored_snapshot(bucket);
  pqxx::connection own(url);
  return stored_snapshot(bucket, own);
}

template <class Fn>
std::string invalid_argument_message(Fn&& fn) {
  try {
    fn();
  } catch (const dmm::InvalidArgument& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL("expected dmm::InvalidArgument, got: " << e.what());
  }
  FAIL("expected dmm::InvalidArgument, nothing was thrown");
  return {};
}

struct Fixture {
  std::string name = unique_name("bad");
  dmm::Bucket bucket = open_bucket(name, [](dmm::BucketOptions& o) { o.max_state_bytes = 4096; });
  std::shared_ptr<Recorder> recorder = std::make_shared<Recorder>();
  Fixture() {
    bucket.register_kind<Song>("song", fast_kind());
    bucket.provide(recorder);
    bucket.notify(Song{.id = "existing", .title = "Blue", .plays = 1});
  }
  // Everything stored in the bucket, to compare before and after.
  std::string snapshot() { return bucket_snapshot(name); }
};

}  // namespace

TEST_CASE("an invalid bucket name is rejected at open, naming it", "[bad-input]") {
  Fixture f;
  const std::string before = f.snapshot();
  for (const std::string& name : {"music player"s, "music.player"s, ""s, std::string(65, 'b'), "münchen"s}) {
    INFO("bucket '" << name << "'");
    auto message = invalid_argument_message([&] { open_bucket(name); });
    if (!name.empty()) CHECK_THAT(message, Catch::Contains(name.substr(0, 20)));
    CHECK_THAT(message, Catch::Contains("bucket"));
    CHECK(bucket_snapshot(name).empty());
  }
  CHECK(f.snapshot() == before);
}

TEST_CASE("an invalid kind name is rejected at register_kind, naming it", "[bad-input]") {
  Fixture f;
  const std::string before = f.snapshot();
  auto bucket = open_bucket(f.name);  // the same bucket, in another process's build
  for (const std::string& kind : {"music player"s, "a.b"s, ""s, std::string(65, 'k'), "kind>"s}) {
    INFO("kind '" << kind << "'");
    auto message = invalid_argument_message([&] { bucket.register_kind<Song>(kind); });
    if (!kind.empty()) CHECK_THAT(message, Catch::Contains(kind.substr(0, 20)));
  }
  CHECK(f.snapshot() == before);
}

TEST_CASE("bad kind options are rejected at register_kind, naming the field", "[bad-input]") {
  Fixture f;
  const std::string before = f.snapshot();
  auto bucket = open_bucket(f.name);
  dmm::KindOptions zero_concurrency;
  zero_concurrency.concurrency = 0;
  CHECK_THAT(invalid_argument_message([&] { bucket.register_kind<Song>("song", zero_concurrency); }),
             Catch::Contains("concurrency"));
  dmm::KindOptions shrinking;
  shrinking.backoff.multiplier = 0.5;
  CHECK_THAT(invalid_argument_message([&] { bucket.register_kind<Song>("song", shrinking); }),
             Catch::Contains("multiplier"));
  CHECK(f.snapshot() == before);
}

TEST_CASE("an empty, huge or malformed identity is rejected and nothing is stored", "[bad-input]") {
  Fixture f;
  const std::string before = f.snapshot();
  const std::string bad[] = {""s, std::string(1 << 20, 'i'), std::string(1025, 'i'), "bad\xff\xfeutf8"s,
                             "nul\0inside"s};
  for (const auto& identity : bad) {
    INFO("identity of " << identity.size() << " bytes");
    auto message = invalid_argument_message([&] { f.bucket.notify(Song{.id = identity, .title = "x"}); });
    CHECK_THAT(message, Catch::Contains("song"));
    invalid_argument_message([&] { f.bucket.notify_many(std::vector<Song>{{.id = "fine-1", .title = "x"},
                                                                          {.id = identity, .title = "x"}}); });
    pqxx::connection app(servers().postgres);
    pqxx::work txn(app);
    invalid_argument_message([&] { f.bucket.notify(txn, Song{.id = identity, .title = "x"}); });
  }
  CHECK(f.snapshot() == before);
  CHECK(count_matters(f.name) == 1);
}

TEST_CASE("an oversize state is rejected and nothing is stored", "[bad-input]") {
  Fixture f;
  const std::string before = f.snapshot();
  const Song huge{.id = "huge", .title = std::string(8192, 't')};
  auto message = invalid_argument_message([&] { f.bucket.notify(huge); });
  CHECK_THAT(message, Catch::Contains("huge"));
  invalid_argument_message([&] { f.bucket.notify(Song{.id = "existing", .title = std::string(8192, 't')}); });
  invalid_argument_message([&] {
    f.bucket.update<Song>("existing", [](Song& s) { s.title = std::string(8192, 't'); });
  });
  CHECK(f.snapshot() == before);
  f.bucket.notify(Song{.id = "small", .title = std::string(1000, 't')});  // under the limit
  CHECK(count_matters(f.name) == 2);
}

TEST_CASE("notify and get of an unregistered type are rejected", "[bad-input]") {
  Fixture f;
  const std::string before = f.snapshot();
  auto message = invalid_argument_message([&] { f.bucket.notify(Unregistered{.id = "x"}); });
  CHECK_FALSE(message.empty());
  invalid_argument_message([&] { f.bucket.get<Unregistered>("x"); });
  invalid_argument_message([&] { f.bucket.remove<Unregistered>("x"); });
  CHECK(f.snapshot() == before);
}

TEST_CASE("a stored state that does not decode fails the matter, naming it, and keeps the state", "[bad-input]") {
  Fixture f;
  // Another build registers the same kind name with an incompatible type and
  // notifies through its own Bucket (it never runs workers).
  auto other = open_bucket(f.name);
  other.register_kind<SongV2>("song", fast_kind());
  other.notify(SongV2{.id = "garbled", .title = "Red", .plays = "many"});
  const auto stored = query_matter(f.name, "song", "garbled");
  REQUIRE(stored.has_value());

  Runner runner(f.bucket);
  wait_until([&] { return query_phase(f.name, "song", "garbled") == "failed"; }, 10s, "garbled to be failed",
             [&] { return describe_unconverged(f.name); });
  auto failed = query_matter(f.name, "song", "garbled");
  CHECK_THAT(failed->last_error, Catch::Contains("song"));
  CHECK_THAT(failed->last_error, Catch::Contains("garbled"));
  CHECK(failed->state == stored->state);  // nothing lost
  CHECK(failed->state.at("plays") == "many");
  CHECK(f.recorder->count("garbled") == 0);

  // Other matters of the kind still converge.
  f.bucket.notify(Song{.id = "healthy", .title = "Green"});
  wait_until([&] { return query_phase(f.name, "song", "healthy") == "ready"; }, 10s, "healthy to become ready",
             [&] { return describe_unconverged(f.name); });
  CHECK(query_phase(f.name, "song", "garbled") == "failed");
  runner.stop();
}

TEST_CASE("an unreachable PostgreSQL is a ConnectionError with the password masked", "[bad-input]") {
  Fixture f;
  const std::string before = f.snapshot();
  const std::string url =
      "postgresql://dmmuser:Sup3r-Secret-pw@127.0.0.1:" + std::to_string(closed_port()) + "/dmm?connect_timeout=3";
  const auto started = Clock::now();
  try {
    open_bucket(f.name, [&](dmm::BucketOptions& o) { o.postgres = url; });
    FAIL("open succeeded against a closed port");
  } catch (const dmm::ConnectionError& e) {
    std::string message = e.what();
    CHECK_THAT(message, Catch::Contains(dmm::mask_url(url)));
    CHECK_THAT(message, Catch::Contains("****"));
    CHECK_THAT(message, !Catch::Contains("Sup3r-Secret-pw"));
  }
  CHECK(Clock::now() - started < 10s);
  CHECK(f.snapshot() == before);
}

TEST_CASE("an unknown PostgreSQL database is a ConnectionError naming it", "[bad-input]") {
  Fixture f;
  const std::string before = f.snapshot();
  const std::string url = with_database(servers().postgres, "no_such_database_for_dmm");
  try {
    open_bucket(f.name, [&](dmm::BucketOptions& o) { o.postgres = url; });
    FAIL("open succeeded against a missing database");
  } catch (const dmm::ConnectionError& e) {
    CHECK_THAT(std::string(e.what()), Catch::Contains("no_such_database_for_dmm"));
  }
  CHECK(f.snapshot() == before);
}

TEST_CASE("an unreachable NATS is a ConnectionError with the password masked", "[bad-input]") {
  Fixture f;
  const std::string before = f.snapshot();
  const std::string url = "nats://natsuser:N4ts-Secret-pw@127.0.0.1:" + std::to_string(closed_port());
  const auto started = Clock::now();
  try {
    open_bucket(f.name, [&](dmm::BucketOptions& o) { o.nats = url; });
    FAIL("open succeeded against a closed port");
  } catch (const dmm::ConnectionError& e) {
    std::string message = e.what();
    CHECK_THAT(message, Catch::Contains(dmm::mask_url(url)));
    CHECK_THAT(message, !Catch::Contains("N4ts-Secret-pw"));
  }
  CHECK(Clock::now() - started < 10s);
  CHECK(f.snapshot() == before);
}

TEST_CASE("an applied migration that was edited is a MigrationError naming it", "[bad-input]") {
  const ScratchDatabase db("dmm_mig");
  const std::string& url = db.url();

  const std::string stored = unique_name("mig");
  {
    auto bucket = open_bucket(stored, [&](dmm::BucketOptions& o) { o.postgres = url; });
    bucket.register_kind<Song>("song", fast_kind());
    bucket.notify(Song{.id = "kept", .title = "Yellow", .plays = 3});
  }
  auto status = dmm::migration_status(url);
  REQUIRE_FALSE(status.empty());
  CHECK(status[0].name == "0001_init.sql");
  for (const auto& m : status) CHECK(m.applied);
  CHECK(dmm::migrate(url) == 0);  // nothing left to apply

  {
    pqxx::connection conn(url);
    pqxx::work tx(conn);
    tx.exec("UPDATE dmm.schema_migrations SET checksum = '0000000000000000' WHERE version = 1");
    tx.commit();
  }
  // The migrations table and the stored matter, to compare after the refusals.
  auto migrations = [&] {
    pqxx::connection conn(url);
    pqxx::nontransaction tx(conn);
    std::string out;
    for (const auto& r : tx.exec("SELECT * FROM dmm.schema_migrations ORDER BY version"))
      for (pqxx::row::size_type i = 0; i < r.size(); ++i) out += std::string(r[i].c_str()) + "|";
    return out;
  };
  const auto migrations_before = migrations();
  const auto before = bucket_snapshot(stored, url);
  REQUIRE_THAT(before, Catch::Contains("Yellow"));
  try {
    open_bucket(stored, [&](dmm::BucketOptions& o) { o.postgres = url; });
    FAIL("open accepted an edited migration");
  } catch (const dmm::MigrationError& e) {
    CHECK_THAT(std::string(e.what()), Catch::Contains("0001_init.sql"));
  }
  CHECK_THROWS_AS(dmm::migrate(url), dmm::MigrationError);
  CHECK(migrations() == migrations_before);
  CHECK(bucket_snapshot(stored, url) == before);
}
