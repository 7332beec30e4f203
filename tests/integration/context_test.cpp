// Context::notify and Context::matter (dmm/context.hpp): a materializer that
// manages other matters notifies them and reads their stored state.
#include <catch2/catch.hpp>

#include "harness.hpp"

using namespace dmm_test;

namespace {

// Materialized by the track worker; records the song it was given.
struct Track {
  std::string id;
  std::string song;
  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context& ctx) {
    ctx.service<Recorder>().record("track:" + id, {.value = song});
    return dmm::Result::done();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Track, id, song)

// Creates one Track per song with ctx.notify.
struct Playlist {
  std::string name;
  std::vector<std::string> songs;
  std::string identity() const { return name; }
  dmm::Result materialize(dmm::Context& ctx) {
    for (const auto& song : songs) ctx.notify(Track{.id = name + "/" + song, .song = song});
    return dmm::Result::done();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Playlist, name, songs)

// Looks up the Track `of` with ctx.matter and records what it found.
struct Reader {
  std::string id;
  std::string of;
  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context& ctx) {
    const auto track = ctx.matter<Track>(of);
    ctx.service<Recorder>().record("reader:" + id,
                                   {.value = track ? "found " + track->id + " playing " + track->song : "nothing"});
    return dmm::Result::done();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Reader, id, of)

struct Fixture {
  std::string name = unique_name("ctx");
  dmm::Bucket bucket = open_bucket(name);
  std::shared_ptr<Recorder> recorder = std::make_shared<Recorder>();
  Fixture() {
    bucket.provide(recorder);
    bucket.register_kind<Track>("track", fast_kind());
    bucket.register_kind<Playlist>("playlist", fast_kind());
    bucket.register_kind<Reader>("reader", fast_kind());
  }
  bool converged(const std::string& kind, const std::string& id) {
    auto r = query_matter(name, kind, id);
    return r && r->phase == "ready" && r->materialized_generation == r->generation;
  }
  std::function<std::string()> describe() {
    return [n = name] { return describe_unconverged(n); };
  }
};

}  // namespace

TEST_CASE("a matter notified by a materializer with ctx.notify is stored and materialized to convergence",
          "[context]") {
  Fixture f;
  Runner runner(f.bucket);

  f.bucket.notify(Playlist{.name = "mix", .songs = {"intro", "outro"}});
  // The tracks can converge before the playlist's own write-back lands: wait
  // for all three.
  wait_until([&] {
    return f.converged("track", "mix/intro") && f.converged("track", "mix/outro") && f.converged("playlist", "mix");
  }, 15s, "the playlist and both its tracks to converge", f.describe());
  CHECK(query_matter(f.name, "track", "mix/intro")->state == nlohmann::json(Track{"mix/intro", "intro"}));
  CHECK(query_matter(f.name, "track", "mix/outro")->state == nlohmann::json(Track{"mix/outro", "outro"}));
  // Materialized by the track worker with the state the playlist notified.
  const auto intro = f.recorder->entries("track:mix/intro");
  REQUIRE(!intro.empty());
  CHECK(intro.back().value == "intro");
  const auto outro = f.recorder->entries("track:mix/outro");
  REQUIRE(!outro.empty());
  CHECK(outro.back().value == "outro");
  runner.stop();
}

TEST_CASE("ctx.matter returns the stored state of another matter, and nullopt for one that does not exist",
          "[context]") {
  Fixture f;
  f.bucket.notify(Track{.id = "t1", .song = "first"});
  f.bucket.notify(Track{.id = "t1", .song = "second"});  // the stored state is the last one notified
  Runner runner(f.bucket);

  f.bucket.notify(Reader{.id = "finds", .of = "t1"});
  f.bucket.notify(Reader{.id = "misses", .of = "no-such-track"});
  wait_until([&] { return f.converged("reader", "finds") && f.converged("reader", "misses"); }, 15s,
             "both readers to converge", f.describe());
  const auto finds = f.recorder->entries("reader:finds");
  REQUIRE(!finds.empty());
  for (const auto& e : finds) CHECK(e.value == "found t1 playing second");
  const auto misses = f.recorder->entries("reader:misses");
  REQUIRE(!misses.empty());
  for (const auto& e : misses) CHECK(e.value == "nothing");
  // Looking a matter up does not create it.
  CHECK_FALSE(query_matter(f.name, "track", "no-such-track").has_value());
  runner.stop();
}
