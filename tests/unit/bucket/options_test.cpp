// Option validation (bucket/options.hpp): a bad backoff names the kind and the field.
#include "bucket/options.hpp"

#include <catch2/catch.hpp>

#include "dmm/errors.hpp"

using dmm::Backoff;
using dmm::detail::validate_backoff;
using std::chrono::milliseconds;

namespace {

Backoff no_jitter() { return Backoff{.initial = milliseconds(200), .max = milliseconds(60'000), .multiplier = 2.0, .jitter = 0.0}; }

}  // namespace

TEST_CASE("the default backoff is valid", "[backoff]") {
  CHECK_NOTHROW(validate_backoff(Backoff{}, "music-player"));
  CHECK_NOTHROW(validate_backoff(no_jitter(), "music-player"));
  Backoff full = no_jitter();
  full.jitter = 1.0;
  full.multiplier = 1.0;
  CHECK_NOTHROW(validate_backoff(full, "music-player"));
}

TEST_CASE("an unusable backoff is rejected naming the kind and the field", "[backoff]") {
  struct Bad {
    const char* what;
    const char* field;
    Backoff backoff;
  };
  const Bad cases[] = {
      {"zero initial", "initial", {.initial = milliseconds(0)}},
      {"negative initial", "initial", {.initial = milliseconds(-5)}},
      {"negative max", "max", {.max = milliseconds(-1)}},
      {"zero max", "max", {.max = milliseconds(0)}},
      {"multiplier below 1", "multiplier", {.multiplier = 0.5}},
      {"negative multiplier", "multiplier", {.multiplier = -2.0}},
      {"negative jitter", "jitter", {.jitter = -0.1}},
      {"jitter above 1", "jitter", {.jitter = 1.5}},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    try {
      validate_backoff(c.backoff, "music-player");
      FAIL_CHECK("accepted: " << c.what);
    } catch (const dmm::InvalidArgument& e) {
      std::string message = e.what();
      CHECK_THAT(message, Catch::Contains("music-player"));
      CHECK_THAT(message, Catch::Contains(c.field));
    }
  }
}
