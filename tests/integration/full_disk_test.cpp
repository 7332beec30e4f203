// A full disk, simulated for real: a nats-server whose JetStream store is
// capped (jetstream { max_file_store }) and filled by another stream, and a
// PostgreSQL database whose tablespace lives on a small tmpfs that a filler
// table fills up. In both cases whatever notify accepted stays stored, nothing
// stored changes when a write is refused, and every matter converges once the
// disk has room again.
#include <nats/nats.h>
#include <spdlog/sinks/ostream_sink.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "harness.hpp"

using namespace dmm_test;

namespace {

struct Shelf {
  std::string id;
  long version = 0;
  std::string note{};
  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context&) { return dmm::Result::done(); }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Shelf, id, version, note)

// Everything the library logs, to show what a user sees.
struct CapturedLog {
  std::ostringstream out;
  std::shared_ptr<spdlog::logger> logger;
  CapturedLog() {
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out);
    logger = std::make_shared<spdlog::logger>("full-disk", sink);
    logger->set_level(spdlog::level::info);
  }
  std::string text() {
    logger->flush();
    return out.str();
  }
};

std::string snapshot(pqxx::connection& conn, const std::string& bucket) {
  pqxx::nontransaction tx(conn);
  std::string out;
  for (const auto& r : tx.exec_params("SELECT identity, state::text, generation FROM dmm.matter WHERE bucket = $1 "
                                      "ORDER BY identity",
                                      bucket))
    out += r[0].as<std::string>() + " " + r[1].as<std::string>() + " " + r[2].as<std::string>() + "\n";
  return out;
}

// Identities of `bucket` not ready at their last generation with the version
// expected, in `conn`'s database.
long not_converged(pqxx::connection& conn, const std::string& bucket, const std::map<std::string, long>& expected) {
  pqxx::nontransaction tx(conn);
  std::map<std::string, long> ready;
  for (const auto& r : tx.exec_params("SELECT identity, (state->>'version')::bigint FROM dmm.matter WHERE bucket = $1 "
                                      "AND phase = 'ready' AND materialized_generation = generation",
                                      bucket))
    ready[r[0].as<std::string>()] = r[1].as<long>();
  long missing = 0;
  for (const auto& [id, version] : expected)
    if (!ready.count(id) || ready[id] != version) ++missing;
  return missing;
}

bool port_answers(int port) {
  natsConnection* nc = nullptr;
  const auto url = "nats://127.0.0.1:" + std::to_string(port);
  if (natsConnection_ConnectTo(&nc, url.c_str()) != NATS_OK) return false;
  natsConnection_Destroy(nc);
  return true;
}

// A nats-server whose JetStream file store may hold at most `max_file_store`
// bytes: what a full disk looks like to JetStream.
struct SmallNats {
  std::filesystem::path dir;
  int port = closed_port();
  std::string url;
  std::unique_ptr<Process> server;
  explicit SmallNats(long max_file_store) {
    if (!std::filesystem::exists("/usr/sbin/nats-server")) FAIL("nats-server is not installed: run scripts/setup");
    dir = std::filesystem::temp_directory_path() / unique_name("smallnats");
    std::filesystem::create_directories(dir);
    std::ofstream(dir / "nats.conf") << "listen: 127.0.0.1:" << port << "\n"
                                     << "jetstream { store_dir: \"" << (dir / "js").string()
                                     << "\", max_file_store: " << max_file_store << " }\n";
    server = std::make_unique<Process>(
        "/usr/sbin/nats-server", std::vector<std::string>{"-c", (dir / "nats.conf").string(), "-l",
                                                          (dir / "nats.log").string()});
    url = "nats://127.0.0.1:" + std::to_string(port);
    wait_until([&] { return port_answers(port); }, 10s, "the small nats-server to answer");
  }
  ~SmallNats() {
    server.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
};

// Another stream that takes the JetStream store's room, like other data on
// a shared disk.
class Filler {
 public:
  explicit Filler(const std::string& url) {
    REQUIRE(natsConnection_ConnectTo(&nc_, url.c_str()) == NATS_OK);
    REQUIRE(natsConnection_JetStream(&js_, nc_, nullptr) == NATS_OK);
  }
  ~Filler() {
    jsCtx_Destroy(js_);
    natsConnection_Destroy(nc_);
  }
  // Publishes 4 KiB messages until JetStream refuses one; returns its error.
  std::string fill() {
    const char* subjects[] = {"filler.>"};
    jsStreamConfig cfg;
    jsStreamConfig_Init(&cfg);
    cfg.Name = "FILLER";
    cfg.Subjects = subjects;
    cfg.SubjectsLen = 1;
    cfg.Storage = js_FileStorage;
    jsStreamInfo* si = nullptr;
    jsErrCode jerr{};
    REQUIRE(js_AddStream(&si, js_, &cfg, nullptr, &jerr) == NATS_OK);
    jsStreamInfo_Destroy(si);
    const std::string payload(4096, 'f');
    for (int i = 0; i < 10000; ++i) {
      jsPubAck* ack = nullptr;
      jerr = {};
      const auto subject = "filler." + std::to_string(i);
      natsStatus s = js_Publish(&ack, js_, subject.c_str(), payload.data(), static_cast<int>(payload.size()), nullptr,
                                &jerr);
      jsPubAck_Destroy(ack);
      if (s != NATS_OK) {
        const auto refusal = std::string(natsStatus_GetText(s)) + " (JetStream error " + std::to_string(jerr) +
                             ": " + nats_GetLastError(nullptr) + ")";
        // Then the last bytes of room, with small messages.
        for (int j = 0; j < 10000 && publish("filler.small." + std::to_string(j)); ++j) {
        }
        return refusal;
      }
    }
    FAIL("JetStream accepted 40 MB in a store capped far below that");
    return {};
  }
  // A token-sized publish on `subject`: NATS_OK or not.
  bool publish(const std::string& subject) {
    jsPubAck* ack = nullptr;
    jsErrCode jerr{};
    natsStatus s = js_Publish(&ack, js_, subject.c_str(), "x", 1, nullptr, &jerr);
    jsPubAck_Destroy(ack);
    return s == NATS_OK;
  }
  void remove() {
    jsErrCode jerr{};
    REQUIRE(js_DeleteStream(js_, "FILLER", nullptr, &jerr) == NATS_OK);
  }

 private:
  natsConnection* nc_ = nullptr;
  jsCtx* js_ = nullptr;
};

// The uid that owns the PostgreSQL server's data directory.
uid_t postgres_uid() {
  pqxx::nontransaction tx(pg());
  const auto data = tx.exec1("SELECT current_setting('data_directory')")[0].as<std::string>();
  struct stat st {};
  if (::stat(data.c_str(), &st) != 0)
    FAIL("cannot stat PostgreSQL's data directory " << data << ": the test needs the server on this machine");
  return st.st_uid;
}

// A database whose tablespace is a tmpfs of `megabytes`: when it is full,
// every write that needs a new page fails with "No space left on device",
// while the WAL (in the data directory) still has room.
struct SmallDatabase {
  std::string name = unique_name("dmm_full");
  std::filesystem::path mount = std::filesystem::temp_directory_path() / (name + "_ts");
  bool mounted = false, tablespace = false, database = false;
  std::string url;
  explicit SmallDatabase(int megabytes) {
    if (::geteuid() != 0)
      FAIL("the PostgreSQL full-disk test mounts a small tmpfs for a tablespace and must run as root "
           "(scripts/test does on the development machine and in CI)");
    const auto uid = postgres_uid();
    std::filesystem::create_directories(mount);
    const auto options = "size=" + std::to_string(megabytes) + "m,mode=0700,uid=" + std::to_string(uid);
    if (::mount("tmpfs", mount.c_str(), "tmpfs", 0, options.c_str()) != 0)
      FAIL("cannot mount a tmpfs on " << mount << ": " << std::strerror(errno)
                                      << " (the test needs CAP_SYS_ADMIN to simulate a full disk)");
    mounted = true;
    pqxx::nontransaction tx(pg());
    tx.exec("CREATE TABLESPACE " + name + " LOCATION " + tx.quote(mount.string()));
    tablespace = true;
    tx.exec("CREATE DATABASE " + name + " TABLESPACE " + name);
    database = true;
    url = with_database(servers().postgres, name);
  }
  ~SmallDatabase() {
    try {
      pqxx::nontransaction tx(pg());
      if (database) tx.exec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)");
      if (tablespace) tx.exec("DROP TABLESPACE IF EXISTS " + name);
    } catch (const std::exception& e) {
      WARN("cleanup of " << name << ": " << e.what());
    }
    if (mounted && ::umount2(mount.c_str(), MNT_DETACH) != 0) WARN("cannot unmount " << mount);
    std::error_code ec;
    std::filesystem::remove(mount, ec);
  }
};

}  // namespace

TEST_CASE("a full JetStream store: notify stays durable in PostgreSQL, matters converge once there is room",
          "[bad-input]") {
  SmallNats nats(2L << 20);  // 2 MiB of JetStream file store
  CapturedLog log;
  const auto name = unique_name("fullnats");
  // A bucket runs once (stop() is final): the first phase has its own.
  auto open = [&] {
    auto b = open_bucket(name, [&](dmm::BucketOptions& o) {
      o.nats = nats.url;
      o.logger = log.logger;
    });
    b.register_kind<Shelf>("shelf", fast_kind());
    return b;
  };
  auto bucket = open();
  std::map<std::string, long> expected;
  {
    auto first = open();
    Runner runner(first);
    bucket.notify(Shelf{.id = "before", .version = 1});
    expected["before"] = 1;
    wait_until([&] { return not_converged(pg(), name, expected) == 0; }, 20s, "the first matter to be ready",
               [&] { return describe_unconverged(name); });
  }
  const auto before = snapshot(pg(), name);

  Filler filler(nats.url);
  const auto refusal = filler.fill();
  INFO("JetStream refused the filler with: " << refusal);
  // dmm's own subjects are refused too: the store is full for everyone.
  CHECK_FALSE(filler.publish("dmm." + name + ".shelf.1"));

  // notify still succeeds: the state is durable in PostgreSQL; only the token
  // (a wake-up) cannot be published.
  std::vector<Shelf> batch;
  for (int i = 0; i < 200; ++i) batch.push_back({.id = "shelf-" + std::to_string(i), .version = 1});
  bucket.notify_many(batch);
  bucket.notify(Shelf{.id = "before", .version = 2});
  for (const auto& s : batch) expected[s.id] = 1;
  expected["before"] = 2;
  CHECK(count_matters(name) == 201);
  CHECK(query_matter(name, "shelf", "before")->state["version"] == 2);

  Runner runner(bucket);
  // While the store is full, the sweeper keeps trying; nothing stored changes
  // except through materializations that did get a token.
  wait_until([&] { return log.text().find("NATS did not accept a token: insufficient resources") != std::string::npos; },
             20s, "dmm to report that NATS refuses its tokens", [&] { return log.text(); });
  for (const auto& [id, version] : expected) CHECK(query_matter(name, "shelf", id)->state["version"] == version);

  filler.remove();  // the disk has room again
  wait_until([&] { return not_converged(pg(), name, expected) == 0; }, 60s,
             "every matter to converge once JetStream has room", [&] { return describe_unconverged(name); });
  runner.stop();
  CHECK(before != snapshot(pg(), name));  // the notifies above did land
  UNSCOPED_INFO("what the user sees while the store is full:\n" << log.text().substr(0, 2000));
}

TEST_CASE("a full PostgreSQL tablespace: the refused notify changes nothing, accepted ones are kept, matters "
          "converge once there is room",
          "[bad-input]") {
  SmallDatabase db(24);
  const auto name = unique_name("fullpg");
  pqxx::connection conn(db.url);
  std::map<std::string, long> expected;
  auto open = [&] {
    auto b = open_bucket(name, [&](dmm::BucketOptions& o) { o.postgres = db.url; });
    b.register_kind<Shelf>("shelf", fast_kind());
    return b;
  };
  auto bucket = open();
  {
    auto first = open();
    std::vector<Shelf> kept;
    for (int i = 0; i < 100; ++i) kept.push_back({.id = "kept-" + std::to_string(i), .version = 1});
    bucket.notify_many(kept);
    for (const auto& s : kept) expected[s.id] = 1;
    Runner runner(first);
    wait_until([&] { return not_converged(conn, name, expected) == 0; }, 30s, "the first matters to be ready");
  }

  // Fill the tablespace with incompressible rows until PostgreSQL refuses.
  {
    pqxx::nontransaction tx(conn);
    tx.exec("CREATE TABLE filler (b bytea) WITH (autovacuum_enabled = false)");
    tx.exec("ALTER TABLE filler ALTER COLUMN b SET STORAGE EXTERNAL");
  }
  std::string refusal;
  for (int i = 0; i < 200 && refusal.empty(); ++i) {
    try {
      pqxx::nontransaction tx(conn);
      tx.exec("INSERT INTO filler SELECT decode(string_agg(md5(random()::text || g), ''), 'hex') "
              "FROM generate_series(1, 16384) g, generate_series(1, 8) r GROUP BY r");
    } catch (const pqxx::sql_error& e) {
      refusal = e.what();
      CHECK(e.sqlstate() == "53100");  // disk_full
    }
  }
  REQUIRE_FALSE(refusal.empty());
  INFO("PostgreSQL refused the filler with: " << refusal);
  const auto before = snapshot(conn, name);

  // A bulk notify of new matters needs new pages: refused as a whole, with
  // PostgreSQL's error and code; nothing stored changes.
  std::vector<Shelf> big;
  for (int i = 0; i < 3000; ++i) big.push_back({.id = "new-" + std::to_string(i), .version = 1, .note = std::string(300, 'n')});
  std::string seen;
  try {
    bucket.notify_many(big);
    FAIL("a notify of 1 MB of new matters succeeded on a full tablespace");
  } catch (const dmm::DatabaseError& e) {
    seen = e.what();
    CHECK(e.sqlstate() == "53100");
  }
  INFO("notify on a full disk: " << seen);
  CHECK_THAT(seen, Catch::Contains("No space left on device") &&
                       Catch::Contains("bucket '" + name + "': notify of 3000 matters of kind 'shelf' (matters 1-2000)") &&
                       Catch::Contains("nothing of it took effect"));
  CHECK(snapshot(conn, name) == before);

  // Workers keep running while the disk is full; small updates may or may not
  // fit, and every one that notify accepted must be kept.
  Runner runner(bucket);
  int accepted = 0, refused = 0;
  for (int round = 2; round < 6; ++round)
    for (int i = 0; i < 100; i += 7) {
      const auto id = "kept-" + std::to_string(i);
      try {
        bucket.notify(Shelf{.id = id, .version = round, .note = std::string(200, 'u')});
        expected[id] = round;
        ++accepted;
      } catch (const dmm::DatabaseError& e) {
        CHECK(e.sqlstate() == "53100");
        CHECK_THAT(e.what(), Catch::Contains("bucket '" + name + "': notify of kind 'shelf' identity '" + id + "'"));
        ++refused;
      }
    }
  UNSCOPED_INFO("small updates on the full disk: " << accepted << " accepted, " << refused << " refused");

  {
    pqxx::nontransaction tx(conn);
    tx.exec("DROP TABLE filler");  // the disk has room again
  }
  bucket.notify_many(big);
  for (const auto& s : big) expected[s.id] = 1;
  wait_until([&] { return not_converged(conn, name, expected) == 0; }, 60s,
             "every matter to converge once the tablespace has room", [&] {
               pqxx::nontransaction tx(conn);
               std::string out;
               for (const auto& r : tx.exec_params("SELECT identity, phase, generation, materialized_generation, "
                                                   "coalesce(last_error, '') FROM dmm.matter WHERE bucket = $1 AND "
                                                   "NOT (phase = 'ready' AND generation = materialized_generation) "
                                                   "LIMIT 5",
                                                   name))
                 out += r[0].c_str() + std::string(" ") + r[1].c_str() + " " + r[2].c_str() + "/" + r[3].c_str() +
                        " " + r[4].c_str() + "\n";
               return out;
             });
  runner.stop();
}
