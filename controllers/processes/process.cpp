// ProcessMatter: adopt, replace, restart or start; finalize stops.
#include <dmm/controllers/processes.hpp>

#include <algorithm>

#include <dmm/controllers/hash.hpp>

namespace dmm::controllers::processes {

namespace {

using std::chrono::milliseconds;

// A crash loop waits through this many failed attempts at most (dmm's
// backoff doubles each time, up to KindOptions::backoff.max).
constexpr int kMaxBackoffSteps = 8;

void check_spec(const ProcessSpec& s) {
  auto bad = [&](const std::string& why) { throw dmm::TerminalError("process '" + s.name + "': " + why); };
  if (s.name.empty() || s.name.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") !=
                            std::string::npos || s.name.front() == '.')
    bad("name must be letters, digits, '.', '_' or '-' (it names the log file)");
  if (s.command.empty()) bad("command is empty");
  if (s.cwd.empty() || s.cwd.front() != '/') bad("cwd '" + s.cwd + "' must be absolute");
  if (s.restart != "always" && s.restart != "on-failure" && s.restart != "never")
    bad("restart '" + s.restart + "' must be always, on-failure or never");
  if (s.stop_grace_ms < 0) bad("stop_grace_ms must not be negative");
}

// What a running process was started from: a change means "replace it".
std::string spec_hash(const ProcessSpec& s) {
  return content_hash(nlohmann::json{{"command", s.command}, {"args", s.args}, {"env", s.env}, {"cwd", s.cwd}}.dump());
}

}  // namespace

std::vector<dmm::Dependency> ProcessMatter::dependencies() const {
  std::vector<dmm::Dependency> deps;
  for (const auto& need : spec.depends_on) deps.push_back({need.kind, need.identity});
  return deps;
}

dmm::Result ProcessMatter::materialize(dmm::Context& ctx) {
  check_spec(spec);
  auto& supervisor = ctx.service<ProcessSupervisor>();
  const std::string hash = spec_hash(spec);

  if (auto running = supervisor.find_running(spec, status)) {
    if (running->spec_hash == hash) {  // ours, as specified: adopt it, start nothing
      if (running->pid != status.pid) ctx.log().info("process '{}': adopted pid {}", spec.name, running->pid);
      const int restarts = status.restarts, streak = status.crash_streak;
      status = *running;
      status.restarts = restarts;
      status.crash_streak = streak;
      supervisor.watch(spec.name, status);
      return dmm::Result::done();
    }
    ctx.log().info("process '{}': spec changed, stopping pid {} to replace it", spec.name, running->pid);
    supervisor.stop(*running, milliseconds(spec.stop_grace_ms), spec.name);
    status.phase = "stopped";
  } else if (status.phase == "running") {
    // It died while nobody watched (hostd was down): record that first, then
    // decide on a restart in the next call (requeue_after(0) stores the exit).
    record_exit(status, supervisor.exit_code(spec.name, status.pid));
    return dmm::Result::requeue_after(milliseconds(0));
  }

  const bool restarting = status.phase == "exited" && status.spec_hash == hash;
  if (restarting) {
    if (spec.restart == "never" || (spec.restart == "on-failure" && status.exit_code == 0))
      return dmm::Result::done();  // exited, and stays so
    // A crash loop counts as failed attempts, so dmm's backoff spaces the restarts.
    const int waits = std::min(status.crash_streak, kMaxBackoffSteps);
    if (ctx.attempt() <= waits)
      throw std::runtime_error("exited with code " + std::to_string(status.exit_code) + " " +
                               std::to_string(status.crash_streak) + " time(s) in a row soon after starting; " +
                               "restarting after backoff (" + std::to_string(ctx.attempt()) + "/" +
                               std::to_string(waits) + ")");
  }
  ctx.require_ready(dependencies());  // NotReady: retried, and woken when they are ready

  const ProcessStatus before = status;
  status = supervisor.start(spec, hash);
  status.restarts = before.restarts + (restarting ? 1 : 0);
  status.crash_streak = restarting ? before.crash_streak : 0;
  status.exit_code = before.exit_code;  // of the last exit, kept for the record
  status.exited_at_ms = before.exited_at_ms;
  supervisor.watch(spec.name, status);
  ctx.log().info("process '{}': started pid {}{} (log {})", spec.name, status.pid,
                 restarting ? " (restart " + std::to_string(status.restarts) + ")" : "",
                 supervisor.log_path(spec.name).string());
  return dmm::Result::done();
}

void ProcessMatter::finalize(dmm::Context& ctx) {
  auto& supervisor = ctx.service<ProcessSupervisor>();
  supervisor.forget(spec.name);  // its exit is no crash: do not report (and restart) it
  if (auto running = supervisor.find_running(spec, status)) {
    supervisor.stop(*running, milliseconds(spec.stop_grace_ms), spec.name);
    ctx.log().info("process '{}': stopped pid {}", spec.name, running->pid);
  }
  supervisor.remove_records(spec.name);
}

}  // namespace dmm::controllers::processes
