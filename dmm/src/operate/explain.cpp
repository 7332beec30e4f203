// "Why is this matter not ready?": the sentence, the text and JSON views of
// a matter (shared by dmmctl, example debug and the web view).
#include <fmt/format.h>
#include <optional>
#include <nlohmann/json.hpp>

#include "dmm/inspect.hpp"
#include "dmm/steps.hpp"
#include "operate/steps_view.hpp"
#include "protocol/vocabulary.hpp"

namespace dmm {

std::string human_duration(std::int64_t ms) {
  if (ms < 0) ms = -ms;
  if (ms < 1000) return fmt::format("{}ms", ms);
  if (ms < 60'000) return fmt::format("{:.1f}s", static_cast<double>(ms) / 1000);
  const auto s = ms / 1000;
  if (s < 3600) return fmt::format("{}m{:02}s", s / 60, s % 60);
  if (s < 86400) return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
  return fmt::format("{}d{:02}h", s / 86400, (s % 86400) / 3600);
}

std::string due_by_priority_text(const KindStats& k) {
  std::string out;
  for (auto p : detail::kPrioritiesHighFirst) {
    auto it = k.due_by_priority.find(detail::to_string(p));
    out += fmt::format("{}{}", out.empty() ? "" : "/", it == k.due_by_priority.end() ? 0 : it->second);
  }
  return out;
}

std::string slots_text(const KindStats& k) {
  return k.slots == 0 ? "-" : fmt::format("{}/{}", k.slots_in_use, k.slots);
}

std::string rate_text(const RateState& r) {
  return r.count == 0 ? "-" : fmt::format("{} per {}, burst {}", r.count, human_duration(r.per_ms), r.burst);
}

namespace {

// " (in 4.2s)" / " (3m12s ago)" for due_in_ms.
std::string relative(const std::optional<std::int64_t>& in_ms) {
  if (!in_ms) return "";
  return *in_ms >= 0 ? fmt::format(" (in {})", human_duration(*in_ms))
                      : fmt::format(" ({} ago)", human_duration(*in_ms));
}

// "since T (3m12s ago)": when the owed work came due ("now" if unknown).
std::string due_since(const MatterStatus& m) {
  return fmt::format("since {}{}", m.due_at.empty() ? "now" : m.due_at, relative(m.due_in_ms));
}

std::string last_error(const MatterStatus& m) {
  return m.last_error.empty() ? "" : fmt::format(" (last error: {})", m.last_error);
}

// The action (dmm::Steps) of the state that is under way: its progress and
// the step it stands at; nullopt if none is.
struct ActionAt {
  StepProgress progress;
  std::size_t index = 0;  // of the step it stands at
};
std::optional<ActionAt> action_at(const MatterStatus& m) {
  for (auto& shown : detail::steps_in(m.state)) {
    if (!shown.progress || shown.progress->phase == "done" || shown.progress->phase == "pending") continue;
    const auto* step = detail::current_step(*shown.progress);
    if (!step) continue;
    const auto index = static_cast<std::size_t>(step - shown.progress->steps.data());
    return ActionAt{std::move(*shown.progress), index};
  }
  return std::nullopt;
}

// "step 'health-check' (3 of 4)"
std::string step_name(const ActionAt& a) {
  return fmt::format("step '{}' ({} of {})", a.progress.steps[a.index].name, a.index + 1, a.progress.steps.size());
}

}  // namespace

std::string explain(const MatterStatus& m, const std::vector<AttemptRecord>& history) {
  const std::string last_run =
      history.empty() ? "" : fmt::format(", last attempt at {} by {}", history.front().started_at, history.front().worker);
  const auto action = action_at(m);
  if (!m.lease_owner.empty())
    return fmt::format("{} generation {}: leased by worker {} since {} (lease until {}){}{}",
                       m.phase == "deleting" ? "finalizing" : "materializing", m.generation, m.lease_owner,
                       m.leased_at.empty() ? "?" : m.leased_at, m.lease_until,
                       action ? fmt::format("; at {}, {}", step_name(*action), action->progress.phase) : "",
                       last_error(m));
  if (action && action->progress.phase == "rolled back" && m.phase == "failed")
    return fmt::format("failed and rolled back: {}; waiting for a new state or a retry (dmmctl retry {} {})",
                       action->progress.error, m.kind, m.identity);
  if (action && m.phase == "retrying" && action->progress.steps[action->index].status == "retrying") {
    const auto& step = action->progress.steps[action->index];
    return fmt::format("step '{}' failed {} time{} (last error: {}); retrying at {}{} ({}; the steps before it "
                       "are done and do not run again)",
                       step.name, step.attempts, step.attempts == 1 ? "" : "s", step.last_error, m.due_at,
                       relative(m.due_in_ms), step_name(*action));
  }
  if (m.phase == "ready" && m.due_at.empty())
    return fmt::format("ready: generation {} is materialized{}", m.materialized_generation, last_run);
  if (m.phase == "ready")
    return fmt::format("ready: generation {} is materialized; materializes again at {}{} (requeue_after)",
                       m.materialized_generation, m.due_at, relative(m.due_in_ms));
  if (m.phase == detail::to_string(detail::Phase::failed) && m.last_error.rfind(detail::kGaveUpPrefix, 0) == 0)
    return fmt::format("failed: {}; waiting for a new state or a retry (dmmctl retry {} {})", m.last_error, m.kind,
                       m.identity);
  if (m.phase == "failed")
    return fmt::format("failed terminally after {} attempt(s) with: {}; waiting for a new state or a retry "
                       "(dmmctl retry {} {})",
                       m.attempts, m.last_error.empty() ? "(no error text)" : m.last_error, m.kind, m.identity);
  if (m.phase == "retrying" || (m.phase == "deleting" && m.attempts > 0 && m.due_in_ms && *m.due_in_ms > 0))
    return fmt::format("waiting for backoff until {}{} after {} failure(s){}{}", m.due_at, relative(m.due_in_ms),
                       m.attempts, m.phase == "deleting" ? " of finalize" : "", last_error(m));
  if (m.phase == "deleting")
    return fmt::format("being removed: waiting for a token, then a worker of kind '{}' finalizes and deletes it "
                       "(due {}){}",
                       m.kind, due_since(m), last_error(m));
  if (m.phase == "pending" && m.due_in_ms && *m.due_in_ms > 0)
    return fmt::format("delayed: generation {} is not due before {}{} (a notify with a delay)", m.generation,
                       m.due_at, relative(m.due_in_ms));
  // pending: work is owed and nobody holds the lease.
  if (m.slots > 0 && m.slots_in_use >= m.slots)
    return fmt::format("waiting for a global concurrency slot ({} of {} in use): generation {} is due {} and runs "
                       "when a run of kind '{}' ends",
                       m.slots_in_use, m.slots, m.generation, due_since(m), m.kind);
  if (m.rate.count > 0 && m.rate.available < 1)
    return fmt::format("rate limited ({}): generation {} is due {} and starts when the rate allows, in about {}",
                       rate_text(m.rate), m.generation, due_since(m),
                       human_duration(static_cast<std::int64_t>((1 - m.rate.available) *
                                                                static_cast<double>(m.rate.per_ms) / m.rate.count)));
  const std::string resend =
      m.kick_at.empty() ? "" : fmt::format("; the sweeper re-sends it at {} if no worker takes it", m.kick_at);
  return fmt::format("waiting for a token: generation {} is due {} and no worker of kind '{}' has taken it yet{}",
                     m.generation, due_since(m), m.kind, resend);
}

namespace {

// The steps of every dmm::Steps progress in the state, as a table; empty if
// there is none.
std::string format_steps(const std::string& state_text) {
  std::string out;
  for (const auto& [field, p] : detail::steps_in(state_text)) {
    if (!p) {
      out += fmt::format("steps ({}):   (does not decode)\n", field);
      continue;
    }
    out += fmt::format("steps ({}): {} for generation {}{}\n", field, p->phase, p->generation,
                       p->error.empty() ? "" : " (" + p->error + ")");
    out += fmt::format("  {:<20} {:<16} {:>8} {:>9}  {:<20} {}\n", "STEP", "STATUS", "ATTEMPTS", "ROLLBACKS",
                       "AT", "LAST ERROR");
    for (const auto& r : p->steps)
      out += fmt::format("  {:<20} {:<16} {:>8} {:>9}  {:<20} {}\n", r.name, r.status, r.attempts,
                         r.rollback_attempts, r.at.empty() ? "-" : r.at, r.last_error.empty() ? "-" : r.last_error);
  }
  return out;
}

}  // namespace

std::string format_detail(const MatterDetail& d) {
  const auto& m = d.status;
  auto or_dash = [](const std::string& s) { return s.empty() ? std::string("-") : s; };
  std::string out;
  out += fmt::format("kind:          {}\n", m.kind);
  out += fmt::format("identity:      {}\n", m.identity);
  out += fmt::format("phase:         {}{}\n", m.phase, m.removing ? " (removal pending)" : "");
  out += fmt::format("generation:    {} (materialized {}){}\n", m.generation, m.materialized_generation,
                     m.generation == m.materialized_generation ? "" : " - not materialized yet");
  out += fmt::format("attempts:      {} failed since the last success or change\n", m.attempts);
  out += fmt::format("last error:    {}\n", or_dash(m.last_error));
  out += fmt::format("next due:      {}{}\n", or_dash(m.due_at), relative(m.due_in_ms));
  out += fmt::format("token re-sent: {}\n", or_dash(m.kick_at));
  out += m.lease_owner.empty()
             ? std::string("lease:         -\n")
             : fmt::format("lease:         {} since {}, expires {}\n", m.lease_owner, m.leased_at, m.lease_until);
  out += fmt::format("created:       {} ({} ago), updated {}\n", m.created_at, human_duration(m.age_ms), m.updated_at);
  out += fmt::format("why:           {}\n", d.why);
  out += fmt::format("state:         {}\n", m.state);
  out += format_steps(m.state);
  if (d.history.empty()) {
    out += "history:       (no attempts recorded)\n";
    return out;
  }
  out += fmt::format("history (last {}, newest first):\n", d.history.size());
  out += fmt::format("  {:<4} {:<4} {:<7} {:<24} {:>9}  {:<9} {:<28} {}\n", "SEQ", "GEN", "ATTEMPT", "STARTED",
                     "DURATION", "OUTCOME", "WORKER", "ERROR");
  for (const auto& a : d.history)
    out += fmt::format("  {:<4} {:<4} {:<7} {:<24} {:>9}  {:<9} {:<28} {}\n", a.seq, a.generation, a.attempt,
                       a.started_at, fmt::format("{}ms", a.duration_ms), a.outcome, a.worker, a.error);
  return out;
}

void to_json(nlohmann::json& j, const MatterStatus& m) {
  auto opt = [](const std::string& s) { return s.empty() ? nlohmann::json() : nlohmann::json(s); };
  nlohmann::json state;
  try {
    state = nlohmann::json::parse(m.state);
  } catch (const nlohmann::json::exception&) {
    state = m.state;
  }
  j = {{"id", m.id},
       {"kind", m.kind},
       {"identity", m.identity},
       {"phase", m.phase},
       {"generation", m.generation},
       {"materialized_generation", m.materialized_generation},
       {"attempts", m.attempts},
       {"last_error", opt(m.last_error)},
       {"due_at", opt(m.due_at)},
       {"due_in_ms", m.due_in_ms ? nlohmann::json(*m.due_in_ms) : nlohmann::json()},
       {"kick_at", opt(m.kick_at)},
       {"lease_owner", opt(m.lease_owner)},
       {"lease_until", opt(m.lease_until)},
       {"leased_at", opt(m.leased_at)},
       {"created_at", m.created_at},
       {"updated_at", m.updated_at},
       {"age_ms", m.age_ms},
       {"removing", m.removing},
       {"state", std::move(state)}};
}

void to_json(nlohmann::json& j, const AttemptRecord& a) {
  j = {{"seq", a.seq},
       {"generation", a.generation},
       {"attempt", a.attempt},
       {"started_at", a.started_at},
       {"duration_ms", a.duration_ms},
       {"outcome", a.outcome},
       {"error", a.error.empty() ? nlohmann::json() : nlohmann::json(a.error)},
       {"worker", a.worker}};
}

void to_json(nlohmann::json& j, const MatterDetail& d) {
  j = d.status;
  j["history"] = d.history;
  j["why"] = d.why;
}

}  // namespace dmm
