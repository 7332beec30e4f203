// Bucket/kind names, identities, and how they map onto JetStream subjects.
#include "protocol/names.hpp"

#include <algorithm>
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "dmm/errors.hpp"

using namespace std::string_literals;
using dmm::detail::validate_identity;
using dmm::detail::validate_name;

namespace {

// The InvalidArgument message `fn` throws; FAILs if it throws nothing.
template <class Fn>
std::string rejection(Fn&& fn) {
  try {
    fn();
  } catch (const dmm::InvalidArgument& e) {
    return e.what();
  }
  FAIL("accepted");
  return {};
}

}  // namespace

TEST_CASE("bucket and kind names of 1-64 characters from [A-Za-z0-9_-] are valid", "[names]") {
  for (const char* what : {"bucket", "kind"}) {
    CHECK_NOTHROW(validate_name(what, "music"));
    CHECK_NOTHROW(validate_name(what, "music-player"));
    CHECK_NOTHROW(validate_name(what, "Music_Player-2"));
    CHECK_NOTHROW(validate_name(what, "x"));
    CHECK_NOTHROW(validate_name(what, std::string(64, 'a')));
  }
}

TEST_CASE("other bucket and kind names are rejected naming the value", "[names]") {
  const std::string bad[] = {"",      std::string(65, 'a'), "music.player", "music player", "music*",
                             "music>", "küche",              "a/b",          "a\nb",         "a\0b"s};
  for (const auto& name : bad) {
    for (const char* what : {"bucket", "kind"}) {
      INFO(what << " '" << name << "'");
      std::string message = rejection([&] { validate_name(what, name); });
      CHECK_THAT(message, Catch::Contains(what));
      if (!name.empty() && name.find('\0') == std::string::npos && name.find('\n') == std::string::npos)
        CHECK_THAT(message, Catch::Contains(name.substr(0, 20)));  // long values may be shortened
    }
  }
}

TEST_CASE("identities of 1-1024 bytes of UTF-8 are valid", "[names]") {
  CHECK_NOTHROW(validate_identity("player", "kitchen"));
  CHECK_NOTHROW(validate_identity("player", "x"));
  CHECK_NOTHROW(validate_identity("player", std::string(1024, 'x')));
  CHECK_NOTHROW(validate_identity("player", "küche 🎵 ß/\\ . * > spaces and dots"));
  std::string multibyte;
  while (multibyte.size() + 4 <= 1024) multibyte += "🎵";  // 4 bytes each: 1024 bytes
  CHECK(multibyte.size() == 1024);
  CHECK_NOTHROW(validate_identity("player", multibyte));
}

TEST_CASE("an empty identity is rejected naming the kind", "[names]") {
  CHECK_THAT(rejection([] { validate_identity("music-player", ""); }), Catch::Contains("music-player"));
}

TEST_CASE("an identity longer than 1024 bytes is rejected naming the kind", "[names]") {
  CHECK_THAT(rejection([] { validate_identity("music-player", std::string(1025, 'x')); }),
             Catch::Contains("music-player"));
  CHECK_THAT(rejection([] { validate_identity("music-player", std::string(1 << 20, 'x')); }),
             Catch::Contains("music-player"));
  std::string multibyte;
  while (multibyte.size() <= 1024) multibyte += "ß";  // 1026 bytes, 513 characters
  CHECK_THAT(rejection([&] { validate_identity("music-player", multibyte); }), Catch::Contains("music-player"));
}

TEST_CASE("an identity that is not valid UTF-8 or holds NUL is rejected naming the kind", "[names]") {
  const std::string bad[] = {
      "\xff",           "ab\xfe",         "\xc3",          // truncated sequence
      "\xc3(",          "\x80",           "\xc0\x80",      // overlong NUL
      "\xe0\x80\xaf",   "\xed\xa0\x80",   "\xf4\x90\x80\x80",  // overlong, surrogate, > U+10FFFF
      "a\0b"s,          "\0"s,
  };
  for (const auto& identity : bad) {
    INFO("identity bytes: " << Catch::Detail::stringify(identity));
    CHECK_THAT(rejection([&] { validate_identity("music-player", identity); }), Catch::Contains("music-player"));
  }
}

TEST_CASE("streams and subjects are named after the bucket and kind", "[names]") {
  using namespace dmm::detail;
  CHECK(stream_name("music") == "DMM_music");
  CHECK(bucket_subjects("music") == "dmm.music.>");
  CHECK(kind_subjects("music", "music-player") == "dmm.music.music-player.>");
  CHECK(token_subject("music", "music-player", 42) == "dmm.music.music-player.42");
  CHECK(token_subject("b", "k", 9'007'199'254'740'993) == "dmm.b.k.9007199254740993");
}

TEST_CASE("each priority class of a kind has subjects and a consumer of its own", "[names]") {
  using namespace dmm::detail;
  using dmm::Priority;
  using Ids = std::vector<std::int64_t>;
  // Normal keeps the names of a bucket made before priorities.
  CHECK(class_name("player", Priority::normal) == "player");
  CHECK(class_name("player", Priority::high) == "player~high");
  CHECK(class_name("player", Priority::low) == "player~low");
  CHECK(kind_of_class_name("player~high") == "player");
  CHECK(kind_of_class_name("player") == "player");
  CHECK(kind_subjects("music", "player", Priority::high) == "dmm.music.player~high.>");
  CHECK(token_subject("music", "player", 42, Priority::low) == "dmm.music.player~low.42");
  // A class's filter does not cover another class's tokens (WorkQueue streams
  // refuse overlapping consumers), and a token parses only in its own class.
  const auto high = token_messages("music", "player", {3, 1, 2}, Priority::high);
  REQUIRE(high.size() == 1);
  CHECK(high[0].subject == "dmm.music.player~high.1.3");
  CHECK(parse_token(high[0].subject, high[0].payload, "music", "player", Priority::high) == Ids{1, 2, 3});
  for (auto other : {Priority::normal, Priority::low}) {
    CHECK_FALSE(parse_token(high[0].subject, high[0].payload, "music", "player", other).has_value());
    CHECK_FALSE(parse_token(token_subject("music", "player", 7, other), "", "music", "player", Priority::high));
  }
  // A kind whose name merely starts like another kind's class name is a
  // different kind: '~' is not allowed in kind names.
  CHECK_THROWS_AS(validate_name("kind", "player~high"), dmm::InvalidArgument);
}

TEST_CASE("a token subject parses back into its row id", "[names]") {
  using dmm::detail::parse_token;
  using dmm::detail::token_subject;
  using Ids = std::vector<std::int64_t>;
  CHECK(parse_token("dmm.music.music-player.42", "", "music", "music-player") == Ids{42});
  for (std::int64_t id : {std::int64_t{1}, std::int64_t{123456789}, std::int64_t{9'223'372'036'854'775'807}})
    CHECK(parse_token(token_subject("b_1", "k-2", id), "", "b_1", "k-2") == Ids{id});
}

TEST_CASE("foreign or malformed subjects do not parse", "[names]") {
  using dmm::detail::parse_token;
  const char* foreign[] = {
      "dmm.other.music-player.42",       // another bucket
      "dmm.music.other.42",              // another kind
      "dmm.music.music-player2.42",      // a kind that merely starts alike
      "dmm.music.music.42",              // a prefix of the kind
      "xyz.music.music-player.42",       // not ours at all
      "dmm.music.music-player",          // no id
      "dmm.music.music-player.",         // empty id
      "dmm.music.music-player.4x2",      // not a number
      "dmm.music.music-player.42.7",     // a many-matter subject without its payload
      "dmm.music.music-player. 42",      // whitespace
      "dmm.music.music-player.99999999999999999999",  // overflows int64
      "",
  };
  for (const char* subject : foreign) {
    INFO(subject);
    CHECK_FALSE(parse_token(subject, "", "music", "music-player").has_value());
  }
}

TEST_CASE("tokens for many matters name up to 64 sorted ids each and parse back", "[names]") {
  using dmm::detail::kMaxIdsPerToken;
  using dmm::detail::parse_token;
  using dmm::detail::token_messages;
  CHECK(token_messages("b", "k", {}).empty());

  // One id: the one-matter subject, no payload, so its notifies coalesce.
  auto one = token_messages("b", "k", {7, 7});
  REQUIRE(one.size() == 1);
  CHECK(one[0].subject == "dmm.b.k.7");
  CHECK(one[0].payload.empty());
  CHECK(parse_token(one[0].subject, one[0].payload, "b", "k") == std::vector<std::int64_t>{7});

  auto few = token_messages("b", "k", {30, 10, 20, 10});
  REQUIRE(few.size() == 1);
  CHECK(few[0].subject == "dmm.b.k.10.30");
  CHECK(few[0].payload == "10,20,30");
  CHECK(parse_token(few[0].subject, few[0].payload, "b", "k") == std::vector<std::int64_t>{10, 20, 30});

  // 1000 ids: as few tokens as the limit allows, of about equal size, every
  // id exactly once.
  std::vector<std::int64_t> ids;
  for (std::int64_t i = 1000; i > 0; --i) ids.push_back(i * 3);
  const auto many = token_messages("b", "k", ids);
  CHECK(many.size() == (1000 + kMaxIdsPerToken - 1) / kMaxIdsPerToken);
  std::vector<std::int64_t> back;
  for (const auto& m : many) {
    auto parsed = parse_token(m.subject, m.payload, "b", "k");
    REQUIRE(parsed);
    CHECK(parsed->size() <= kMaxIdsPerToken);
    CHECK(parsed->size() >= 1000 / many.size());
    back.insert(back.end(), parsed->begin(), parsed->end());
  }
  std::sort(ids.begin(), ids.end());
  CHECK(back == ids);
}

TEST_CASE("malformed tokens for many matters do not parse", "[names]") {
  using dmm::detail::parse_token;
  const std::pair<const char*, const char*> bad[] = {
      {"dmm.b.k.1.3", ""},           // no payload
      {"dmm.b.k.1.3", "x"},          // not ids
      {"dmm.b.k.1.3", "1,2"},        // last id is not the subject's
      {"dmm.b.k.1.3", "2,3"},        // first id is not the subject's
      {"dmm.b.k.1.3", "1,3,2"},      // not ascending
      {"dmm.b.k.1.3", "1,1,3"},      // repeated
      {"dmm.b.k.1.3", "1,2,3,"},     // trailing comma
      {"dmm.b.k.1.3", "1, 2,3"},     // whitespace
      {"dmm.b.k.3.1", "3,1"},        // first after last
      {"dmm.b.k.1.1", "1"},          // one id needs the one-matter subject
      {"dmm.b.k.1.extra", "1,2"},    // not a row id
      {"dmm.b.k.1.2.3", "1,2,3"},    // too many subject tokens
      {"dmm.b.k.0.2", "0,2"},        // not a valid row id
      {"dmm.b.other.1.3", "1,2,3"},  // another kind
  };
  for (const auto& [subject, payload] : bad) {
    INFO(subject << " " << payload);
    CHECK_FALSE(parse_token(subject, payload, "b", "k").has_value());
  }
  std::string huge = "1";
  for (int i = 2; i <= 10'001; ++i) huge += "," + std::to_string(i);
  CHECK_FALSE(parse_token("dmm.b.k.1.10001", huge, "b", "k").has_value());
  CHECK(parse_token("dmm.b.k.1.10000", huge.substr(0, huge.rfind(',')), "b", "k")->size() == 10'000);
}
