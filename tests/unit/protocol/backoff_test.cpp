// Retry delays: capped exponential growth and jitter bounds.
#include "protocol/backoff.hpp"

#include <catch2/catch.hpp>

#include "dmm/errors.hpp"

using dmm::Backoff;
using dmm::detail::backoff_delay;
using std::chrono::milliseconds;

namespace {

Backoff no_jitter() { return Backoff{.initial = milliseconds(200), .max = milliseconds(60'000), .multiplier = 2.0, .jitter = 0.0}; }

// Random draws spread over [0, 1).
constexpr double kDraws[] = {0.0, 0.001, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999, 0.999999};

}  // namespace

TEST_CASE("without jitter the first retry waits exactly the initial delay", "[backoff]") {
  for (double u : kDraws) CHECK(backoff_delay(no_jitter(), 1, u) == milliseconds(200));
}

TEST_CASE("retry delays grow by the multiplier per failed attempt", "[backoff]") {
  Backoff b = no_jitter();
  CHECK(backoff_delay(b, 2, 0.5) == milliseconds(400));
  CHECK(backoff_delay(b, 3, 0.5) == milliseconds(800));
  CHECK(backoff_delay(b, 4, 0.5) == milliseconds(1600));
  b.multiplier = 3.0;
  CHECK(backoff_delay(b, 3, 0.5) == milliseconds(1800));
  b.multiplier = 1.0;
  CHECK(backoff_delay(b, 10, 0.5) == milliseconds(200));
}

TEST_CASE("retry delays never exceed the cap, even after very many attempts", "[backoff]") {
  Backoff b = no_jitter();
  b.max = milliseconds(5'000);
  CHECK(backoff_delay(b, 6, 0.5) == milliseconds(5'000));  // 200 * 32 = 6400 > cap
  CHECK(backoff_delay(b, 100, 0.5) == milliseconds(5'000));
  CHECK(backoff_delay(b, 100'000, 0.5) == milliseconds(5'000));  // no overflow
  b.jitter = 0.5;
  for (int attempt : {6, 50, 1'000'000}) {
    for (double u : kDraws) {
      auto d = backoff_delay(b, attempt, u);
      CHECK(d <= milliseconds(5'000));
      CHECK(d >= milliseconds(2'500));
    }
  }
}

TEST_CASE("jitter stays within the configured relative spread", "[backoff]") {
  Backoff b{.initial = milliseconds(1'000), .max = milliseconds(600'000), .multiplier = 2.0, .jitter = 0.2};
  for (int attempt = 1; attempt <= 6; ++attempt) {
    const double base = 1'000.0 * (1 << (attempt - 1));
    for (double u : kDraws) {
      auto d = backoff_delay(b, attempt, u).count();
      INFO("attempt " << attempt << " draw " << u << " delay " << d);
      CHECK(d >= static_cast<long>(base * 0.8) - 1);
      CHECK(d <= static_cast<long>(base * 1.2) + 1);
    }
  }
}

TEST_CASE("jitter actually spreads the delays", "[backoff]") {
  Backoff b{.initial = milliseconds(1'000), .max = milliseconds(600'000), .multiplier = 2.0, .jitter = 0.2};
  auto low = backoff_delay(b, 3, 0.0);
  auto high = backoff_delay(b, 3, 0.999);
  CHECK(high - low >= milliseconds(1'000));  // 4000 * 0.4 ~ 1600 apart
}

TEST_CASE("the first retry waits the initial delay plus or minus jitter", "[backoff]") {
  Backoff b{.initial = milliseconds(200), .max = milliseconds(60'000), .multiplier = 2.0, .jitter = 0.2};
  for (double u : kDraws) {
    auto d = backoff_delay(b, 1, u);
    CHECK(d >= milliseconds(159));
    CHECK(d <= milliseconds(241));
  }
}
