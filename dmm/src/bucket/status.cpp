// What a bucket's HTTP endpoint reports about this process: /metrics (the
// engine's counters and PostgreSQL's gauges) and /readyz (PostgreSQL, NATS,
// and whether each kind's consumer is bound).
#include "bucket/status.hpp"

#include <fmt/format.h>
#include <map>

#include "dmm/inspect.hpp"
#include "dmm/url.hpp"
#include "engine/work_stream_engine.hpp"

namespace dmm::detail {
namespace {

std::string metrics_text(BucketCore& core) {
  std::map<std::string, KindGauges> gauges;
  bool up = true;
  try {
    for (auto& k : kind_stats(core.options().postgres, core.options().name))
      gauges[k.kind] = KindGauges{k.phases,       k.due_now,       k.due_by_priority,
                                  k.gave_up,      k.slots,         k.slots_in_use,
                                  k.rate.count ? std::optional<double>(k.rate.available) : std::nullopt};
  } catch (const std::exception&) {
    up = false;
  }
  for (auto* kind : core.kinds()) gauges.try_emplace(kind->name);
  auto text = core.metrics().render(core.options().name, gauges);
  text += fmt::format("# HELP dmm_postgres_up Whether the last scrape could read PostgreSQL.\n"
                      "# TYPE dmm_postgres_up gauge\ndmm_postgres_up{{bucket=\"{}\"}} {}\n",
                      core.options().name, up ? 1 : 0);
  return text;
}

// (ready, one line per check)
std::pair<bool, std::string> readiness(BucketCore& core) {
  bool ready = true;
  std::string out;
  try {
    core.pool().ping();
    out += "postgres: ok\n";
  } catch (const std::exception& e) {
    ready = false;
    out += fmt::format("postgres: unreachable ({})\n", mask_url(e.what()));
  }
  if (core.nats().connected()) {
    out += "nats: ok\n";
  } else {
    ready = false;
    out += "nats: not connected\n";
  }
  auto kinds = core.kinds();
  if (kinds.empty()) {
    ready = false;
    out += "consumers: no kind registered\n";
  }
  for (auto* kind : kinds) {
    const bool bound = kind->engine->bound();
    ready = ready && bound;
    out += fmt::format("consumer {}: {}\n", kind->name, bound ? "bound" : "not bound (work() not running?)");
  }
  return {ready, out};
}

// The chart's counters over every kind of this process: attempts finished
// (every outcome but a release, which gives a claim back unrun) and, of
// them, the failed ones (retry and failed).
std::pair<std::uint64_t, std::uint64_t> counters(BucketCore& core) {
  std::uint64_t finished = 0, failed = 0;
  for (auto* kind : core.kinds()) {
    const auto& outcomes = core.metrics().kind(kind->name).outcomes;
    for (const auto& [k, _] : kOutcomes) {
      const auto n = outcomes[index_of(k)].load(std::memory_order_relaxed);
      if (k != OutcomeKind::release) finished += n;
      if (k == OutcomeKind::retry || k == OutcomeKind::failed) failed += n;
    }
  }
  return {finished, failed};
}

}  // namespace

StatusEndpoints status_endpoints(BucketCore& core) {
  return {core.options().name, core.options().postgres, &core.logger(), [&core] { return metrics_text(core); },
          [&core] { return readiness(core); }, [&core] { return counters(core); }};
}

}  // namespace dmm::detail
