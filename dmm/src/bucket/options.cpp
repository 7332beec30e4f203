// Every check of a user's options, in one place: a bad value is an
// InvalidArgument that names the bucket or kind, the field, its range and
// its default, thrown by Bucket::open or register_kind.
#include "bucket/options.hpp"

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string_view>
#include <fmt/format.h>
#include <random>
#include <unistd.h>

#include "dmm/errors.hpp"
#include "protocol/names.hpp"
#include "protocol/vocabulary.hpp"

namespace dmm::detail {
namespace {

std::string default_worker_id() {
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  std::random_device rd;
  return fmt::format("{}:{}:{:04x}", host, getpid(), rd() & 0xffff);
}

}  // namespace

void validate_backoff(const Backoff& b, const std::string& kind) {
  auto bad = [&](const std::string& what) {
    throw InvalidArgument("kind '" + kind + "': backoff." + what);
  };
  if (b.initial.count() <= 0) bad("initial must be positive (e.g. 200ms)");
  if (b.max < b.initial) bad("max must be at least backoff.initial");
  if (!(b.multiplier >= 1.0) || !std::isfinite(b.multiplier)) bad("multiplier must be a finite number >= 1");
  if (!(b.jitter >= 0.0 && b.jitter <= 1.0)) bad("jitter must be in [0, 1]");
}

BucketOptions validated(BucketOptions o) {
  validate_name("bucket", o.name);
  if (o.nats.empty())
    throw InvalidArgument(
        fmt::format("bucket '{}': BucketOptions::nats is empty; give a NATS URL such as nats://127.0.0.1:4222", o.name));
  if (o.token_grace.count() <= 0)
    throw InvalidArgument(fmt::format("bucket '{}': token_grace must be positive (default 5s)", o.name));
  if (o.stream_replicas < 1 || o.stream_replicas > 5)
    throw InvalidArgument(fmt::format("bucket '{}': stream_replicas must be 1..5 (default 1; 3 on a cluster)", o.name));
  if (o.max_state_bytes == 0)
    throw InvalidArgument(fmt::format("bucket '{}': max_state_bytes must be positive (default 1 MiB)", o.name));
  if (o.history_retention.count() <= 0)
    throw InvalidArgument(fmt::format("bucket '{}': history_retention must be positive (default 7 days)", o.name));
  if (o.worker_id.empty()) o.worker_id = default_worker_id();
  return o;
}

void validate_http_options(const HttpOptions& o, const std::string& bucket) {
  // The token itself never goes into a message.
  if (!o.action_token.empty() && o.action_token.size() < 16)
    throw InvalidArgument(fmt::format("bucket '{}': HttpOptions::action_token is {} bytes; use at least 16 (e.g. "
                                      "openssl rand -hex 16), or leave it empty to keep actions off",
                                      bucket, o.action_token.size()));
  if (o.sample_every < milliseconds(100) || o.sample_every > milliseconds(60'000))
    throw InvalidArgument(
        fmt::format("bucket '{}': HttpOptions::sample_every must be 100ms..60s (default 5s)", bucket));
}

void validate_kind_options(const KindOptions& o, const std::string& kind) {
  auto bad = [&](const std::string& what) { throw InvalidArgument("kind '" + kind + "': " + what); };
  if (o.concurrency < 1 || o.concurrency > 4096) bad("concurrency must be in 1..4096 (default 4)");
  if (o.batch < 1 || o.batch > 10000) bad("batch must be in 1..10000 (default 256)");
  if (o.prefetch < 0 || o.prefetch > 100000) bad("prefetch must be in 0..100000 (default 0: 2 x max(concurrency, batch))");
  if (o.lease_ttl < std::chrono::milliseconds(300)) bad("lease_ttl must be at least 300ms (default 15s)");
  if (o.lease_margin.count() < 0 || o.lease_margin > o.lease_ttl / 2)
    bad(fmt::format("lease_margin is {}ms; it must be 0 (a third of lease_ttl) up to half of lease_ttl ({}ms): a "
                    "larger margin stops attempts before the next heartbeat could renew their lease",
                    o.lease_margin.count(), (o.lease_ttl / 2).count()));
  if (o.stop_grace.count() < 0) bad("stop_grace must not be negative (default 10s)");
  if (o.history_limit < 0 || o.history_limit > 1000) bad("history_limit must be in 0..1000 (default 10)");
  if (o.max_attempts < 0 || o.max_attempts > 1'000'000)
    bad("max_attempts must be in 0..1000000 (default 0: retry forever)");
  if (o.resync_every.count() != 0 &&
      (o.resync_every < std::chrono::seconds(1) || o.resync_every > std::chrono::hours(24 * 365)))
    bad("resync_every must be 0 (off) or from 1s to 365 days");
  if (o.global_concurrency < 0 || o.global_concurrency > 100'000)
    bad(fmt::format("global_concurrency is {}; it must be in 0..100000 (default 0: no limit across processes)",
                    o.global_concurrency));
  if (o.rate_limit.count != 0) {
    const auto& r = o.rate_limit;
    if (r.count < 0 || r.count > 1'000'000)
      bad(fmt::format("rate_limit.count is {}; it must be in 0..1000000 (0: no rate limit)", r.count));
    if (r.per < std::chrono::milliseconds(1) || r.per > std::chrono::hours(24))
      bad(fmt::format("rate_limit.per is {}ms; it must be from 1ms to 24h (e.g. 1s for {} per second)", r.per.count(),
                      r.count));
    if (r.burst < 1 || r.burst > 1'000'000)
      bad(fmt::format("rate_limit.burst is {}; it must be in 1..1000000 (default 1: no burst)", r.burst));
  } else if (o.rate_limit.burst < 0 || o.rate_limit.per.count() < 0) {
    bad("rate_limit has a negative burst or period but no count; give a count (e.g. {.count = 10, .per = 1s})");
  }
  validate_backoff(o.backoff, kind);
}

std::int64_t notify_delay_ms(const NotifyOptions& o, const std::string& kind) {
  using namespace std::chrono;
  if (o.delay.count() < 0)
    throw InvalidArgument(fmt::format("notify of kind '{}': NotifyOptions::delay is negative ({}ms); give 0 for now, "
                                      "or a positive delay",
                                      kind, o.delay.count()));
  if (!o.not_before) return o.delay.count();
  if (o.delay.count() > 0)
    throw InvalidArgument(fmt::format("notify of kind '{}': NotifyOptions sets both delay and not_before; give one",
                                      kind));
  const auto in = duration_cast<milliseconds>(*o.not_before - system_clock::now());
  if (in < -hours(1))
    throw InvalidArgument(fmt::format("notify of kind '{}': NotifyOptions::not_before is {}s in the past; give a time "
                                      "to come (a time up to an hour ago means now); nothing was stored",
                                      kind, -duration_cast<seconds>(in).count()));
  return std::max<std::int64_t>(0, in.count());
}

void validate_priority(const NotifyOptions& o, const std::string& kind) {
  if (!is_known(o.priority))
    throw InvalidArgument(fmt::format("notify of kind '{}': NotifyOptions::priority is {}, not a dmm::Priority; give "
                                      "Priority::low, normal or high; nothing was stored",
                                      kind, static_cast<int>(o.priority)));
}

namespace {

std::optional<std::string> env(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return std::nullopt;
  return std::string(v);
}

[[noreturn]] void bad_env(const char* name, const std::string& value, const char* expected) {
  throw InvalidArgument(fmt::format("environment variable {}='{}' is not {}; fix or unset it", name,
                                    value.substr(0, 64), expected));
}

std::int64_t integer_env(const char* name, const std::string& v, std::int64_t min, std::int64_t max) {
  std::int64_t out = 0;
  const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
  if (ec != std::errc() || end != v.data() + v.size() || out < min || out > max)
    bad_env(name, v, fmt::format("an integer in {}..{}", min, max).c_str());
  return out;
}

milliseconds duration_env(const char* name, const std::string& v) {
  std::int64_t n = 0;
  const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  const std::string_view unit(end, static_cast<std::size_t>(v.data() + v.size() - end));
  const std::int64_t per = unit == "ms" ? 1 : unit == "s" ? 1000 : unit == "m" ? 60'000 : unit == "h" ? 3'600'000
                         : unit == "d" ? 86'400'000 : 0;
  if (ec != std::errc() || n < 0 || per == 0 || n > std::numeric_limits<std::int64_t>::max() / per)
    bad_env(name, v, "a duration such as 250ms, 5s, 10m, 2h or 7d");
  return milliseconds(n * per);
}

bool bool_env(const char* name, const std::string& v) {
  if (v == "1" || v == "true" || v == "yes" || v == "on") return true;
  if (v == "0" || v == "false" || v == "no" || v == "off") return false;
  bad_env(name, v, "true or false (1/0, yes/no, on/off)");
}

}  // namespace

}  // namespace dmm::detail

namespace dmm {

BucketOptions BucketOptions::from_env() {
  using detail::env;
  BucketOptions o;
  if (auto v = env("DMM_BUCKET")) o.name = *v;
  if (auto v = env("DMM_POSTGRES_URL")) o.postgres = *v;
  if (auto v = env("DMM_NATS_URL")) o.nats = *v;
  if (auto v = env("DMM_NATS_CA_FILE")) o.nats_ca_file = *v;
  if (auto v = env("DMM_NATS_CERT_FILE")) o.nats_cert_file = *v;
  if (auto v = env("DMM_NATS_KEY_FILE")) o.nats_key_file = *v;
  if (auto v = env("DMM_NATS_CREDS_FILE")) o.nats_creds_file = *v;
  if (auto v = env("DMM_NATS_NKEY_SEED_FILE")) o.nats_nkey_seed_file = *v;
  if (auto v = env("DMM_WORKER_ID")) o.worker_id = *v;
  if (auto v = env("DMM_STREAM_REPLICAS"))
    o.stream_replicas = static_cast<int>(detail::integer_env("DMM_STREAM_REPLICAS", *v, 1, 5));
  if (auto v = env("DMM_TOKEN_GRACE")) o.token_grace = detail::duration_env("DMM_TOKEN_GRACE", *v);
  if (auto v = env("DMM_MAX_STATE_BYTES"))
    o.max_state_bytes = static_cast<std::size_t>(detail::integer_env("DMM_MAX_STATE_BYTES", *v, 1, 1LL << 40));
  if (auto v = env("DMM_MIGRATE")) o.migrate = detail::bool_env("DMM_MIGRATE", *v);
  if (auto v = env("DMM_HISTORY_RETENTION")) o.history_retention = detail::duration_env("DMM_HISTORY_RETENTION", *v);
  return o;
}

HttpOptions HttpOptions::from_env() {
  using detail::env;
  HttpOptions o;
  if (auto v = env("DMM_HTTP_TOKEN")) o.action_token = *v;
  if (auto v = env("DMM_HTTP_SAMPLE_EVERY")) o.sample_every = detail::duration_env("DMM_HTTP_SAMPLE_EVERY", *v);
  return o;
}

}  // namespace dmm
