// Every check of a user's options, in one place: a bad value is an
// InvalidArgument that names the bucket or kind, the field, its range and
// its default, thrown by Bucket::open or register_kind.
#include "bucket/options.hpp"

#include <algorithm>
#include <fmt/format.h>
#include <random>
#include <unistd.h>

#include "dmm/errors.hpp"
#include "protocol/names.hpp"

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
  if (o.postgres.empty())
    throw InvalidArgument(fmt::format("bucket '{}': BucketOptions::postgres is empty; give a PostgreSQL URL such as "
                                      "postgresql://user@127.0.0.1:5432/db",
                                      o.name));
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

void validate_kind_options(const KindOptions& o, const std::string& kind) {
  auto bad = [&](const std::string& what) { throw InvalidArgument("kind '" + kind + "': " + what); };
  if (o.concurrency < 1 || o.concurrency > 4096) bad("concurrency must be in 1..4096 (default 4)");
  if (o.batch < 1 || o.batch > 10000) bad("batch must be in 1..10000 (default 256)");
  if (o.prefetch < 0 || o.prefetch > 100000) bad("prefetch must be in 0..100000 (default 0: 2 x max(concurrency, batch))");
  if (o.lease_ttl < std::chrono::milliseconds(300)) bad("lease_ttl must be at least 300ms (default 15s)");
  if (o.stop_grace.count() < 0) bad("stop_grace must not be negative (default 10s)");
  if (o.history_limit < 0 || o.history_limit > 1000) bad("history_limit must be in 0..1000 (default 10)");
  if (o.max_attempts < 0 || o.max_attempts > 1'000'000)
    bad("max_attempts must be in 0..1000000 (default 0: retry forever)");
  if (o.resync_every.count() != 0 &&
      (o.resync_every < std::chrono::seconds(1) || o.resync_every > std::chrono::hours(24 * 365)))
    bad("resync_every must be 0 (off) or from 1s to 365 days");
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

}  // namespace dmm::detail
