// More bad input: tokens that point nowhere, foreign messages on dmm's
// subjects, states that cannot be JSON, garbage URLs, a stream of the wrong
// shape, and the rule that an identical state does not revive a failed matter.
#include <nats/nats.h>

#include <catch2/catch.hpp>

#include "harness.hpp"

using namespace dmm_test;

namespace {

struct Light {
  std::string id;
  int level = 0;
  bool broken = false;
  std::string note{};
  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context&) {
    if (broken) throw dmm::TerminalError("light " + id + " is broken");
    return dmm::Result::done();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Light, id, level, broken, note)

// Publishes raw messages to JetStream subjects, as a foreign client would.
void publish_raw(const std::vector<std::string>& subjects) {
  natsConnection* nc = nullptr;
  jsCtx* js = nullptr;
  REQUIRE(natsConnection_ConnectTo(&nc, servers().nats.c_str()) == NATS_OK);
  REQUIRE(natsConnection_JetStream(&js, nc, nullptr) == NATS_OK);
  for (const auto& subject : subjects) {
    jsErrCode jerr{};
    CHECK(js_Publish(nullptr, js, subject.c_str(), "x", 1, nullptr, &jerr) == NATS_OK);
  }
  jsCtx_Destroy(js);
  natsConnection_Destroy(nc);
}

// A bucket holding one ready matter, made by a process that has exited.
std::string stored_bucket(const std::string& prefix) {
  const auto name = unique_name(prefix);
  auto bucket = open_bucket(name);
  bucket.register_kind<Light>("light", fast_kind());
  bucket.notify(Light{.id = "kitchen", .level = 5});
  Runner runner(bucket);
  wait_until([&] { return query_phase(name, "light", "kitchen") == "ready"; }, 20s, "kitchen to be ready");
  return name;
}

}  // namespace

TEST_CASE("tokens for deleted rows and foreign messages on dmm's subjects are dropped, nothing changes",
          "[bad-input]") {
  const auto name = unique_name("tokens");
  auto bucket = open_bucket(name);
  bucket.register_kind<Light>("light", fast_kind());
  bucket.notify(Light{.id = "hall", .level = 3});
  Runner runner(bucket);
  wait_until([&] { return query_phase(name, "light", "hall") == "ready"; }, 20s, "hall to be ready");
  const auto before = stored_snapshot(name);

  publish_raw({"dmm." + name + ".light.987654321",   // a row that does not exist (deleted)
               "dmm." + name + ".light.not-a-row",   // not a row id at all
               "dmm." + name + ".light.-5",          // not a valid row id
               "dmm." + name + ".light.1.extra"});   // too many tokens
  Nats nats(servers().nats);
  wait_until([&] { return nats.stream_messages("DMM_" + name) == 0; }, 20s, "the worker to drop the messages");
  CHECK(stored_snapshot(name) == before);

  // The worker is still healthy.
  bucket.notify(Light{.id = "hall", .level = 4});
  wait_until([&] { return query_matter(name, "light", "hall")->state["level"] == 4 &&
                          query_phase(name, "light", "hall") == "ready"; },
             20s, "hall to converge after the foreign messages");
}

TEST_CASE("a state with strings that are not UTF-8 is rejected, naming the matter", "[bad-input]") {
  const auto name = unique_name("utf8");
  auto bucket = open_bucket(name);
  bucket.register_kind<Light>("light", fast_kind());
  bucket.notify(Light{.id = "porch", .level = 1});
  const auto before = stored_snapshot(name);
  try {
    bucket.notify(Light{.id = "porch", .level = 2, .note = "caf\xe9 in latin-1"});
    FAIL("a state with a non-UTF-8 string was accepted");
  } catch (const dmm::InvalidArgument& e) {
    const std::string what = e.what();
    CHECK(what.find("'light'") != std::string::npos);
    CHECK(what.find("'porch'") != std::string::npos);
    CHECK(what.find("UTF-8") != std::string::npos);
  }
  CHECK(stored_snapshot(name) == before);
}

TEST_CASE("garbage URLs are ConnectionErrors, not crashes", "[bad-input]") {
  const auto name = stored_bucket("url");
  const auto before = stored_snapshot(name);
  CHECK_THROWS_AS(dmm::Bucket::open({.name = name, .postgres = "not a url at all", .nats = servers().nats}),
                  dmm::ConnectionError);
  CHECK_THROWS_AS(dmm::Bucket::open({.name = name, .postgres = servers().postgres, .nats = "::::"}),
                  dmm::ConnectionError);
  CHECK(stored_snapshot(name) == before);
}

TEST_CASE("a stream of that name with the wrong shape is refused with the way out", "[bad-input]") {
  // The bucket has a matter in PostgreSQL; then someone replaces its stream.
  const auto name = stored_bucket("shape");
  const auto before = stored_snapshot(name);
  natsConnection* nc = nullptr;
  jsCtx* js = nullptr;
  REQUIRE(natsConnection_ConnectTo(&nc, servers().nats.c_str()) == NATS_OK);
  REQUIRE(natsConnection_JetStream(&js, nc, nullptr) == NATS_OK);
  const auto stream = "DMM_" + name;
  REQUIRE(js_DeleteStream(js, stream.c_str(), nullptr, nullptr) == NATS_OK);
  const auto subject = "dmm." + name + ".>";
  const char* subjects[] = {subject.c_str()};
  jsStreamConfig cfg;
  jsStreamConfig_Init(&cfg);
  cfg.Name = stream.c_str();
  cfg.Subjects = subjects;
  cfg.SubjectsLen = 1;  // limits retention: not a work queue
  jsStreamInfo* si = nullptr;
  REQUIRE(js_AddStream(&si, js, &cfg, nullptr, nullptr) == NATS_OK);
  jsStreamInfo_Destroy(si);
  const auto subject_of_theirs = "dmm." + name + ".theirs";
  REQUIRE(js_Publish(nullptr, js, subject_of_theirs.c_str(), "keep", 4, nullptr, nullptr) == NATS_OK);
  try {
    open_bucket(name);
    FAIL("open accepted a stream that is not a work queue");
  } catch (const dmm::Error& e) {
    const std::string what = e.what();
    CHECK(what.find(stream) != std::string::npos);
    CHECK(what.find("nats stream rm") != std::string::npos);
  }
  // Neither the stream (its shape and its message) nor the stored matter changed.
  REQUIRE(js_GetStreamInfo(&si, js, stream.c_str(), nullptr, nullptr) == NATS_OK);
  CHECK(si->Config->Retention == js_LimitsPolicy);
  CHECK(si->State.Msgs == 1);
  jsStreamInfo_Destroy(si);
  CHECK(stored_snapshot(name) == before);
  js_DeleteStream(js, stream.c_str(), nullptr, nullptr);
  jsCtx_Destroy(js);
  natsConnection_Destroy(nc);
}

TEST_CASE("a failed matter is not revived by its identical state, but by a different one or retry",
          "[bad-input]") {
  const auto name = unique_name("revive");
  auto bucket = open_bucket(name);
  bucket.register_kind<Light>("light", fast_kind());
  Runner runner(bucket);
  bucket.notify(Light{.id = "attic", .level = 1, .broken = true});
  wait_until([&] { return query_phase(name, "light", "attic") == "failed"; }, 20s, "attic to fail terminally");
  const auto generation = query_matter(name, "light", "attic")->generation;

  bucket.notify(Light{.id = "attic", .level = 1, .broken = true});
  CHECK(query_matter(name, "light", "attic")->generation == generation);
  CHECK(query_phase(name, "light", "attic") == "failed");

  CHECK(bucket.retry<Light>("attic"));
  wait_until([&] { return query_matter(name, "light", "attic")->attempts == 1 &&
                          query_phase(name, "light", "attic") == "failed"; },
             20s, "the explicit retry to run (and fail again)");

  bucket.notify(Light{.id = "attic", .level = 1, .broken = false});
  wait_until([&] { return query_phase(name, "light", "attic") == "ready"; }, 20s, "a different state to revive it");
}

TEST_CASE("malformed JSON cannot reach a matter's row: the jsonb column refuses it and the state is kept",
          "[bad-input]") {
  const auto name = unique_name("json");
  auto bucket = open_bucket(name);
  bucket.register_kind<Light>("light", fast_kind());
  bucket.notify(Light{.id = "cellar", .level = 7});
  const auto before = stored_snapshot(name);
  {
    // Closed before stored_snapshot() opens its own on the same connection.
    pqxx::nontransaction tx(pg());
    CHECK_THROWS_AS(tx.exec_params("UPDATE dmm.matter SET state = $2::jsonb WHERE bucket = $1", name,
                                   std::string("{\"id\": \"cellar\", \"level\": ")),
                    pqxx::data_exception);
  }
  CHECK(stored_snapshot(name) == before);
}

TEST_CASE("valid JSON of the wrong shape in a row fails that matter, naming it, and keeps its state",
          "[bad-input]") {
  const auto name = unique_name("shape_json");
  auto bucket = open_bucket(name);
  bucket.register_kind<Light>("light", fast_kind());
  // What a hand-edited row or another tool could leave: JSON that is not an object.
  const std::map<std::string, std::string> bad = {
      {"null-state", "null"}, {"string-state", "\"x\""}, {"array-state", "[]"}, {"number-state", "42"}};
  for (const auto& [id, json] : bad) bucket.notify(Light{.id = id, .level = 1});
  bucket.notify(Light{.id = "fine", .level = 1});
  {
    pqxx::nontransaction tx(pg());
    for (const auto& [id, json] : bad)
      tx.exec_params("WITH u AS (UPDATE dmm.matter SET state = $3::jsonb, generation = generation + 1, "
                     "phase = 'pending', attempts = 0, last_error = NULL, due_at = now() "
                     "WHERE bucket = $1 AND kind = 'light' AND identity = $2 RETURNING id, bucket, kind) "
                     "INSERT INTO dmm.kick SELECT id, bucket, kind, now() FROM u "
                     "ON CONFLICT (matter_id) DO UPDATE SET kick_at = now()",
                     name, id, json);
  }

  Runner runner(bucket);
  for (const auto& [id, json] : bad) {
    INFO("identity " << id << ", state " << json);
    wait_until([&, id = id] { return query_phase(name, "light", id) == "failed"; }, 20s, id + " to fail",
               [&] { return describe_unconverged(name); });
    const auto row = query_matter(name, "light", id);
    CHECK_THAT(row->last_error, Catch::Contains("'light'"));
    CHECK_THAT(row->last_error, Catch::Contains("'" + id + "'"));
    CHECK_THAT(row->last_error, Catch::Contains("does not decode"));
    CHECK(row->state.dump() == nlohmann::json::parse(json).dump());  // kept as it was
  }
  // The others are unaffected, before and after.
  wait_until([&] { return query_phase(name, "light", "fine") == "ready"; }, 20s, "fine to be ready");
  bucket.notify(Light{.id = "fine", .level = 2});
  wait_until([&] { return query_matter(name, "light", "fine")->state["level"] == 2 &&
                          query_phase(name, "light", "fine") == "ready"; },
             20s, "fine to converge again");
  // A valid state repairs a broken one.
  bucket.notify(Light{.id = "null-state", .level = 3});
  wait_until([&] { return query_phase(name, "light", "null-state") == "ready"; }, 20s,
             "null-state to be repaired by a valid notify");
  runner.stop();
}
