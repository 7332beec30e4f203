// Options (bucket/options.hpp): a bad backoff names the kind and the field;
// BucketOptions::from_env reads the DMM_ variables.
#include "bucket/options.hpp"

#include <catch2/catch.hpp>
#include <string>

#include "dmm/errors.hpp"
#include "scoped_env.hpp"

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

using dmm_test::ScopedEnv;

TEST_CASE("BucketOptions::from_env reads the documented DMM_ variables", "[options]") {
  ScopedEnv env;
  env.set("DMM_BUCKET", "orders")
      .set("DMM_POSTGRES_URL", "postgresql://app@db:5432/app")
      .set("DMM_NATS_URL", "nats://n1:4222,nats://n2:4222")
      .set("DMM_NATS_CA_FILE", "/etc/ca.pem")
      .set("DMM_NATS_CREDS_FILE", "/etc/nats/app.creds")
      .set("DMM_NATS_NKEY_SEED_FILE", "/etc/nats/app.nk")
      .set("DMM_WORKER_ID", "w-1")
      .set("DMM_STREAM_REPLICAS", "3")
      .set("DMM_TOKEN_GRACE", "250ms")
      .set("DMM_MAX_STATE_BYTES", "4096")
      .set("DMM_MIGRATE", "false")
      .set("DMM_HISTORY_RETENTION", "2d");
  const auto o = dmm::BucketOptions::from_env();
  CHECK(o.name == "orders");
  CHECK(o.postgres == "postgresql://app@db:5432/app");
  CHECK(o.nats == "nats://n1:4222,nats://n2:4222");
  CHECK(o.nats_ca_file == "/etc/ca.pem");
  CHECK(o.nats_creds_file == "/etc/nats/app.creds");
  CHECK(o.nats_nkey_seed_file == "/etc/nats/app.nk");
  CHECK(o.worker_id == "w-1");
  CHECK(o.stream_replicas == 3);
  CHECK(o.token_grace == milliseconds(250));
  CHECK(o.max_state_bytes == 4096);
  CHECK_FALSE(o.migrate);
  CHECK(o.history_retention == milliseconds(2LL * 86'400'000));
}

TEST_CASE("BucketOptions::from_env keeps the defaults for unset or empty variables", "[options]") {
  ScopedEnv env;
  env.set("DMM_POSTGRES_URL", "").set("DMM_TOKEN_GRACE", "").unset("DMM_BUCKET");
  const auto o = dmm::BucketOptions::from_env();
  const dmm::BucketOptions defaults;
  CHECK(o.postgres.empty());  // libpq's PG* variables and ~/.pgpass apply
  CHECK(o.token_grace == defaults.token_grace);
  CHECK(o.migrate == defaults.migrate);
}

TEST_CASE("a DMM_ variable that does not parse is refused naming the variable and the form", "[options]") {
  struct Case {
    const char* name;
    const char* value;
    const char* says;
  };
  const Case cases[] = {
      {"DMM_TOKEN_GRACE", "5", "a duration such as 250ms"},
      {"DMM_TOKEN_GRACE", "5 weeks", "a duration"},
      {"DMM_HISTORY_RETENTION", "-1d", "a duration"},
      {"DMM_STREAM_REPLICAS", "7", "an integer in 1..5"},
      {"DMM_MAX_STATE_BYTES", "1MiB", "an integer"},
      {"DMM_MIGRATE", "maybe", "true or false"},
  };
  for (const auto& c : cases) {
    ScopedEnv env;
    env.set(c.name, c.value);
    INFO(c.name << "=" << c.value);
    CHECK_THROWS_AS(dmm::BucketOptions::from_env(), dmm::InvalidArgument);
    CHECK_THROWS_WITH(dmm::BucketOptions::from_env(),
                      Catch::Contains(std::string(c.name) + "='" + c.value + "'") && Catch::Contains(c.says));
  }
}
