// The metrics registry and its Prometheus text rendering.
#include "engine/metrics.hpp"

#include <fmt/format.h>
#include <algorithm>

namespace dmm::detail {
namespace {

// Label values: backslash, double quote and newline escaped.
std::string label(const std::string& v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

}  // namespace

void KindMetrics::count_step(std::string_view outcome) {
  for (std::size_t i = 0; i < kStepOutcomes.size(); ++i)
    if (kStepOutcomes[i] == outcome) steps[i].fetch_add(1, std::memory_order_relaxed);
}

void KindMetrics::observe(std::size_t outcome, std::int64_t duration_us, int attempt) {
  if (outcome < outcomes.size()) outcomes[outcome].fetch_add(1, std::memory_order_relaxed);
  if (attempt > 1) retries.fetch_add(1, std::memory_order_relaxed);
  const double seconds = static_cast<double>(duration_us) / 1e6;
  std::size_t b = 0;
  while (b < kDurationBuckets.size() && seconds > kDurationBuckets[b]) ++b;
  duration_buckets[b].fetch_add(1, std::memory_order_relaxed);
  duration_sum_us.fetch_add(static_cast<std::uint64_t>(std::max<std::int64_t>(0, duration_us)),
                            std::memory_order_relaxed);
}

KindMetrics& Metrics::kind(const std::string& kind) {
  std::lock_guard lock(mu_);
  auto& slot = kinds_[kind];
  if (!slot) slot = std::make_unique<KindMetrics>();
  return *slot;
}

std::string Metrics::render(const std::string& bucket, const std::map<std::string, KindGauges>& gauges) {
  std::map<std::string, KindMetrics*> kinds;
  {
    std::lock_guard lock(mu_);
    for (auto& [name, m] : kinds_) kinds[name] = m.get();
  }
  std::string out;
  auto header = [&](const char* name, const char* type, const char* help) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  };
  const auto b = label(bucket);
  auto counter = [&](const char* name, const char* help, auto get) {
    header(name, "counter", help);
    for (auto& [k, m] : kinds) out += fmt::format("{}{{bucket=\"{}\",kind=\"{}\"}} {}\n", name, b, label(k), get(*m));
  };

  header("dmm_materializations_total", "counter", "Attempts finished in this process, by outcome.");
  for (auto& [k, m] : kinds)
    for (std::size_t i = 0; i < kOutcomes.size(); ++i)
      out += fmt::format("dmm_materializations_total{{bucket=\"{}\",kind=\"{}\",outcome=\"{}\"}} {}\n", b, label(k),
                         kOutcomes[i].name, m->outcomes[i].load());

  header("dmm_materialization_duration_seconds", "histogram",
         "Duration of materialize/finalize calls in this process.");
  for (auto& [k, m] : kinds) {
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i <= kDurationBuckets.size(); ++i) {
      cumulative += m->duration_buckets[i].load();
      const auto le = i < kDurationBuckets.size() ? fmt::format("{}", kDurationBuckets[i]) : std::string("+Inf");
      out += fmt::format("dmm_materialization_duration_seconds_bucket{{bucket=\"{}\",kind=\"{}\",le=\"{}\"}} {}\n", b,
                         label(k), le, cumulative);
    }
    out += fmt::format("dmm_materialization_duration_seconds_sum{{bucket=\"{}\",kind=\"{}\"}} {}\n", b, label(k),
                       static_cast<double>(m->duration_sum_us.load()) / 1e6);
    out += fmt::format("dmm_materialization_duration_seconds_count{{bucket=\"{}\",kind=\"{}\"}} {}\n", b, label(k),
                       cumulative);
  }

  header("dmm_in_flight", "gauge", "Materializations running in this process.");
  for (auto& [k, m] : kinds)
    out += fmt::format("dmm_in_flight{{bucket=\"{}\",kind=\"{}\"}} {}\n", b, label(k), m->in_flight.load());
  counter("dmm_retries_total", "Attempts that retried a failed attempt (attempt number above 1).",
          [](KindMetrics& m) { return m.retries.load(); });
  counter("dmm_lease_takeovers_total",
          "Leases this process lost while materializing (expired or taken over by another worker).",
          [](KindMetrics& m) { return m.leases_lost.load(); });
  counter("dmm_lease_expiry_stops_total",
          "Attempts asked to stop because their lease could not be renewed in time (PostgreSQL unreachable or slow).",
          [](KindMetrics& m) { return m.lease_expiry_stops.load(); });
  counter("dmm_token_publish_errors_total", "Token publishes that failed (the sweeper re-sends them).",
          [](KindMetrics& m) { return m.publish_errors.load(); });
  counter("dmm_token_ack_errors_total", "Token acks that failed (the token is redelivered; harmless).",
          [](KindMetrics& m) { return m.ack_errors.load(); });
  counter("dmm_notifies_grouped_total",
          "Single notifies written in one statement and commit with concurrent notifies of the kind.",
          [](KindMetrics& m) { return m.notifies_grouped.load(); });

  header("dmm_steps_total", "counter",
         "Steps of dmm::Steps actions by outcome: done, retried (a failed attempt of a step), failed (for good), "
         "rolled_back, rollback_failed.");
  for (auto& [k, m] : kinds)
    for (std::size_t i = 0; i < kStepOutcomes.size(); ++i)
      out += fmt::format("dmm_steps_total{{bucket=\"{}\",kind=\"{}\",outcome=\"{}\"}} {}\n", b, label(k),
                         kStepOutcomes[i], m->steps[i].load());

  header("dmm_due", "gauge", "Matters whose work is owed now (due_at <= now()), from PostgreSQL.");
  for (auto& [k, g] : gauges) out += fmt::format("dmm_due{{bucket=\"{}\",kind=\"{}\"}} {}\n", b, label(k), g.due);
  header("dmm_due_by_priority", "gauge",
         "Matters whose work is owed now and not leased, by the priority class they run in, from PostgreSQL.");
  for (auto& [k, g] : gauges)
    for (const auto& p : kPriorities) {
      auto it = g.due_by_priority.find(p.name);
      out += fmt::format("dmm_due_by_priority{{bucket=\"{}\",kind=\"{}\",priority=\"{}\"}} {}\n", b, label(k),
                         p.name, it == g.due_by_priority.end() ? 0 : it->second);
    }
  header("dmm_gave_up", "gauge", "Failed matters that gave up after KindOptions::max_attempts, from PostgreSQL.");
  for (auto& [k, g] : gauges)
    out += fmt::format("dmm_gave_up{{bucket=\"{}\",kind=\"{}\"}} {}\n", b, label(k), g.gave_up);
  header("dmm_global_slots", "gauge",
         "Global concurrency slots of the kind (KindOptions::global_concurrency; 0: no limit), from PostgreSQL.");
  for (auto& [k, g] : gauges)
    out += fmt::format("dmm_global_slots{{bucket=\"{}\",kind=\"{}\"}} {}\n", b, label(k), g.slots);
  header("dmm_global_slots_in_use", "gauge", "Global concurrency slots held by a running matter, from PostgreSQL.");
  for (auto& [k, g] : gauges)
    out += fmt::format("dmm_global_slots_in_use{{bucket=\"{}\",kind=\"{}\"}} {}\n", b, label(k), g.slots_in_use);
  header("dmm_rate_limit_available", "gauge",
         "Starts the kind's rate limit (KindOptions::rate_limit) allows now; below 1, due matters wait for it. "
         "Only kinds with a rate limit.");
  for (auto& [k, g] : gauges)
    if (g.rate_available)
      out += fmt::format("dmm_rate_limit_available{{bucket=\"{}\",kind=\"{}\"}} {:.3f}\n", b, label(k),
                         *g.rate_available);
  header("dmm_matters", "gauge", "Stored matters by phase, from PostgreSQL.");
  for (auto& [k, g] : gauges)
    for (const auto& [_, phase] : kPhases) {
      auto it = g.matters_by_phase.find(phase);
      out += fmt::format("dmm_matters{{bucket=\"{}\",kind=\"{}\",phase=\"{}\"}} {}\n", b, label(k), phase,
                         it == g.matters_by_phase.end() ? 0 : it->second);
    }
  return out;
}

}  // namespace dmm::detail
