// What makes a type a Materializer, and how its state travels as JSON.
#include <catch2/catch.hpp>
#include <chrono>
#include <nlohmann/json.hpp>
#include <string>

#include "dmm/dmm.hpp"

namespace {

struct MusicPlayer {
  std::string player_id;
  std::string desired_song;
  std::string current_song;
  int volume = 0;
  std::string identity() const { return player_id; }
  dmm::Result materialize(dmm::Context&) { return dmm::Result::done(); }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(MusicPlayer, player_id, desired_song, current_song, volume)

struct WithFinalize {
  std::string id;
  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context&) { return dmm::Result::done(); }
  void finalize(dmm::Context&) {}
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(WithFinalize, id)

struct NoIdentity {
  std::string id;
  dmm::Result materialize(dmm::Context&) { return dmm::Result::done(); }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(NoIdentity, id)

struct ReturnsVoid {
  std::string id;
  std::string identity() const { return id; }
  void materialize(dmm::Context&) {}
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(ReturnsVoid, id)

struct NotSerializable {
  std::string id;
  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context&) { return dmm::Result::done(); }
};

struct NotDefaultConstructible {
  explicit NotDefaultConstructible(std::string i) : id(std::move(i)) {}
  std::string id;
  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context&) { return dmm::Result::done(); }
};

}  // namespace

static_assert(dmm::Materializer<MusicPlayer>);
static_assert(dmm::Materializer<WithFinalize>);
static_assert(!dmm::Materializer<NoIdentity>);
static_assert(!dmm::Materializer<ReturnsVoid>);
static_assert(!dmm::Materializer<NotSerializable>);
static_assert(!dmm::Materializer<NotDefaultConstructible>);
static_assert(!dmm::Materializer<int>);
static_assert(dmm::HasFinalize<WithFinalize>);
static_assert(!dmm::HasFinalize<MusicPlayer>);

TEST_CASE("a materializer's state round-trips through JSON", "[codec]") {
  MusicPlayer p{.player_id = "kitchen", .desired_song = "Blue", .current_song = "Red", .volume = 7};
  nlohmann::json j = p;
  CHECK(j.at("player_id") == "kitchen");
  CHECK(j.at("volume") == 7);
  auto back = nlohmann::json::parse(j.dump()).get<MusicPlayer>();
  CHECK(back.player_id == p.player_id);
  CHECK(back.desired_song == p.desired_song);
  CHECK(back.current_song == p.current_song);
  CHECK(back.volume == p.volume);
  CHECK(back.identity() == "kitchen");
}

TEST_CASE("a state of the wrong shape does not decode", "[codec]") {
  CHECK_THROWS_AS(nlohmann::json::parse(R"({"player_id": 5})").get<MusicPlayer>(), nlohmann::json::exception);
  CHECK_THROWS_AS(nlohmann::json::parse(R"([1, 2])").get<MusicPlayer>(), nlohmann::json::exception);
}

TEST_CASE("Result::done asks for nothing more", "[codec]") { CHECK_FALSE(dmm::Result::done().requeue_after()); }

TEST_CASE("Result::requeue_after carries its delay, never negative", "[codec]") {
  using namespace std::chrono_literals;
  auto r = dmm::Result::requeue_after(5s);
  REQUIRE(r.requeue_after().has_value());
  CHECK(*r.requeue_after() == 5000ms);
  auto zero = dmm::Result::requeue_after(-3s);
  REQUIRE(zero.requeue_after().has_value());
  CHECK(*zero.requeue_after() == 0ms);
}

TEST_CASE("every dmm error is a dmm::Error and a std::runtime_error", "[codec]") {
  CHECK_THROWS_AS(throw dmm::InvalidArgument("x"), dmm::Error);
  CHECK_THROWS_AS(throw dmm::ConnectionError("x"), dmm::Error);
  CHECK_THROWS_AS(throw dmm::MigrationError("x"), dmm::Error);
  CHECK_THROWS_AS(throw dmm::TerminalError("x"), std::runtime_error);
}
