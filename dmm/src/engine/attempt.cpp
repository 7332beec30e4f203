#include "engine/attempt.hpp"

#include <algorithm>
#include <cmath>
#include <fmt/format.h>

#include "dmm/errors.hpp"
#include "protocol/backoff.hpp"
#include "protocol/names.hpp"

namespace dmm::detail {
namespace {

Outcome outcome_of(const Claimed& row, OutcomeKind kind) {
  Outcome out;
  out.id = row.id, out.epoch = row.epoch, out.generation = row.generation;
  out.kind = kind;
  return out;
}

}  // namespace

Outcome released(const Claimed& row) { return outcome_of(row, OutcomeKind::release); }

Outcome run_attempt(const KindHooks& hooks, const Claimed& row, Context& ctx, const AttemptPolicy& policy,
                    double unit_random) {
  auto& log = ctx.log();
  Outcome out = outcome_of(row, OutcomeKind::done);
  try {
    nlohmann::json original = nlohmann::json::parse(row.state);
    nlohmann::json state = original;
    if (row.deleting) {
      if (hooks.finalize) hooks.finalize(state, ctx);
      out.kind = OutcomeKind::finalized;
      log.debug("kind '{}' identity '{}': finalized", ctx.kind(), row.identity);
      return out;
    }
    Result result = hooks.materialize(state, ctx);
    if (state != original) {
      check_state_size(state, policy.max_state_bytes, StateSource::materialize, ctx.kind(), row.identity);
      out.state = std::move(state);
    }
    if (auto delay = result.requeue_after()) {
      out.kind = OutcomeKind::requeue;
      out.delay_ms = std::max<std::int64_t>(1, delay->count());
    } else if (policy.resync_every.count() > 0) {
      out.kind = OutcomeKind::requeue;
      const double spread = 0.9 + 0.2 * unit_random;
      out.delay_ms = std::max<std::int64_t>(1, std::llround(static_cast<double>(policy.resync_every.count()) * spread));
    }
    return out;
  } catch (const TerminalError& e) {
    out.kind = OutcomeKind::failed;
    out.error = e.what();
    log.warn("kind '{}' identity '{}': failed terminally on attempt {}: {}", ctx.kind(), row.identity,
             row.attempts + 1, e.what());
    return out;
  } catch (const RetryAfter& e) {
    out.error = e.what();
    out.delay_ms = e.delay().count();
  } catch (const std::exception& e) {
    out.error = e.what();
  } catch (...) {
    out.error = "unknown exception (not derived from std::exception)";
  }
  if (ctx.stop_requested()) return released(row);
  const int attempt = row.attempts + 1;
  if (policy.max_attempts > 0 && attempt >= policy.max_attempts) {
    out.kind = OutcomeKind::failed;
    out.delay_ms = 0;
    out.error = fmt::format("{}{} attempts (KindOptions::max_attempts); last error: {}", kGaveUpPrefix, attempt,
                            out.error);
    log.warn("kind '{}' identity '{}': {}", ctx.kind(), row.identity, out.error);
    return out;
  }
  out.kind = OutcomeKind::retry;
  if (out.delay_ms == 0) out.delay_ms = backoff_delay(policy.backoff, attempt, unit_random).count();
  out.delay_ms = std::max<std::int64_t>(1, out.delay_ms);
  log.info("kind '{}' identity '{}': attempt {} failed: {}; retrying in {}ms", ctx.kind(), row.identity,
           row.attempts + 1, out.error, out.delay_ms);
  return out;
}

}  // namespace dmm::detail
