// RolloutMatter: the four steps of a rollout, their rollbacks, and finalize.
// The old version is stopped in stop-old and nowhere else during a rollout
// (controllers/README.md, "Rollout controller").
#include <dmm/controllers/rollouts.hpp>

#include <fcntl.h>
#include <httplib.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include <dmm/controllers/hash.hpp>

namespace dmm::controllers::rollouts {

namespace {

namespace fs = std::filesystem;
using processes::ProcessSupervisor;
using std::chrono::milliseconds;
using namespace std::chrono_literals;

bool valid_name(const std::string& s) {
  return !s.empty() && s.front() != '.' &&
         s.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") == std::string::npos;
}

void check_spec(const RolloutSpec& s) {
  auto bad = [&](const std::string& why) { throw dmm::TerminalError("rollout '" + s.name + "': " + why); };
  if (!valid_name(s.name)) bad("name must be letters, digits, '.', '_' or '-'");
  if (!valid_name(s.version)) bad("version '" + s.version + "' must be letters, digits, '.', '_' or '-'");
  if (s.command.empty()) bad("command is empty");
  if (s.cwd.empty() || s.cwd.front() != '/') bad("cwd '" + s.cwd + "' must be absolute");
  if (!s.config.path.empty() && s.config.path.front() != '/') bad("config.path must be absolute");
  const auto& h = s.health;
  if (h.url.empty() == h.command.empty()) bad("health: set either url or command");
  if (!h.url.empty() && h.url.rfind("http://", 0) != 0) bad("health.url '" + h.url + "' must start with http://");
  if (h.timeout_ms <= 0 || h.interval_ms < 0 || h.attempts < 0)
    bad("health: timeout_ms must be positive, interval_ms and attempts must not be negative");
  if (s.stop_grace_ms < 0) bad("stop_grace_ms must not be negative");
}

std::string about(const RolloutSpec& s, const std::string& version) {
  return "rollout '" + s.name + "' version " + version;
}

// The version as a process for the supervisor; never restarted by it.
processes::ProcessSpec process_spec(const RolloutSpec& s) {
  return {.name = process_name(s.name, s.version), .command = s.command, .args = s.args, .env = s.env,
          .cwd = s.cwd, .restart = "never", .stop_grace_ms = s.stop_grace_ms, .site = s.site};
}

// What a running version was started from: a change means another process.
std::string spec_hash(const processes::ProcessSpec& p) {
  return content_hash(nlohmann::json{{"command", p.command}, {"args", p.args}, {"env", p.env}, {"cwd", p.cwd}}.dump());
}

// Readers see the old file or the new one, never half of one.
void write_atomically(const fs::path& path, const std::string& content) {
  fs::create_directories(path.parent_path());
  const fs::path tmp = path.parent_path() / ("." + path.filename().string() + ".dmm-tmp");
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << content;
    out.flush();
    if (!out) throw std::runtime_error("cannot write '" + tmp.string() + "'");
  }
  fs::rename(tmp, path);
}

// Stops version `v` (its recorded process, or the one its pid file names).
void stop(const RolloutSpec& spec, const Version& v, dmm::Context& ctx, ProcessSupervisor& supervisor) {
  if (v.version.empty()) return;
  const auto name = process_name(spec.name, v.version);
  if (auto running = supervisor.find_running({.name = name}, v.process)) {
    supervisor.stop(*running, milliseconds(spec.stop_grace_ms), name);
    ctx.log().info("{}: stopped pid {}", about(spec, v.version), running->pid);
  }
  supervisor.remove_records(name);
}

// ------------------------------------------------------------ health probes

void probe_url(const RolloutSpec& s) {
  const auto& url = s.health.url;
  const auto slash = url.find('/', std::string("http://").size());
  httplib::Client client(url.substr(0, slash));
  client.set_connection_timeout(milliseconds(s.health.timeout_ms));
  client.set_read_timeout(milliseconds(s.health.timeout_ms));
  auto res = client.Get(slash == std::string::npos ? "/" : url.substr(slash).c_str());
  if (!res) throw std::runtime_error("GET " + url + ": no answer (" + httplib::to_string(res.error()) + ")");
  if (res->status < 200 || res->status > 299)
    throw std::runtime_error("GET " + url + " answered " + std::to_string(res->status));
}

// Runs the health command in the version's cwd and environment, its output
// appended to the version's log; killed (its group) after the timeout.
void probe_command(const RolloutSpec& s, const fs::path& log) {
  std::map<std::string, std::string> env{{"PATH", std::getenv("PATH") ? std::getenv("PATH") : "/usr/bin:/bin"},
                                         {"LANG", std::getenv("LANG") ? std::getenv("LANG") : "C.UTF-8"}};
  for (const auto& [k, v] : s.env) env[k] = v;
  std::vector<std::string> args = s.health.command, env_strings;
  for (const auto& [k, v] : env) env_strings.push_back(k + "=" + v);
  std::vector<char*> argv, envp;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);

  posix_spawn_file_actions_t files;
  posix_spawnattr_t attr;
  posix_spawn_file_actions_init(&files);
  posix_spawn_file_actions_addopen(&files, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&files, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&files, 1, 2);
  posix_spawn_file_actions_addchdir_np(&files, s.cwd.c_str());
  posix_spawnattr_init(&attr);
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);  // hostd blocks SIGINT and SIGTERM for its own handling
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setpgroup(&attr, 0);  // a group of its own, killed as one on timeout
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);
  pid_t pid = -1;
  const int err = ::posix_spawnp(&pid, argv[0], &files, &attr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&files);
  posix_spawnattr_destroy(&attr);
  const std::string what = "health command '" + args[0] + "'";
  if (err != 0) throw std::runtime_error(what + " cannot start: " + std::strerror(err));

  const auto deadline = std::chrono::steady_clock::now() + milliseconds(s.health.timeout_ms);
  int st = 0;
  while (::waitpid(pid, &st, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() >= deadline) {
      ::kill(-pid, SIGKILL);
      ::waitpid(pid, &st, 0);
      throw std::runtime_error(what + " did not finish within " + std::to_string(s.health.timeout_ms) + " ms");
    }
    std::this_thread::sleep_for(10ms);
  }
  const int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  if (code != 0) throw std::runtime_error(what + " exited with code " + std::to_string(code));
}

// ------------------------------------------------------------------- steps

// write-config. A version an abandoned rollout started (a new version was
// notified mid-way) is stopped first, unless it is the serving one.
void write_config(RolloutMatter& r, dmm::Context& ctx, ProcessSupervisor& supervisor) {
  auto& next = r.status.next;
  if (next.version != r.spec.version && next.version != r.status.serving.version) stop(r.spec, next, ctx, supervisor);
  next = Version{.version = r.spec.version, .config = r.spec.config};
  if (r.spec.config.path.empty()) return;
  write_atomically(r.spec.config.path, r.spec.config.content);
  ctx.log().info("{}: wrote {}", about(r.spec, r.spec.version), r.spec.config.path);
}

// write-config's rollback, the last to run: the serving version's
// configuration back (none: the file is removed); the rollout is over.
void restore_config(RolloutMatter& r, dmm::Context& ctx) {
  const auto& path = r.spec.config.path;
  const auto& before = r.status.serving.config;
  if (!path.empty() && before.path == path) {
    write_atomically(path, before.content);
    ctx.log().info("{}: restored {} of version {}", about(r.spec, r.spec.version), path, r.status.serving.version);
  } else if (!path.empty()) {
    fs::remove(path);
  }
  r.status.next = {};
}

// start-new: adopts the process it started before (a step that was running
// when hostd died runs again); never replaces the serving version.
void start_new(RolloutMatter& r, dmm::Context& ctx, ProcessSupervisor& supervisor) {
  const auto proc = process_spec(r.spec);
  const auto hash = spec_hash(proc);
  auto& next = r.status.next;
  if (auto running = supervisor.find_running(proc, next.process)) {
    if (running->spec_hash == hash) {
      next.process = *running;
      ctx.log().info("{}: runs already as pid {}", about(r.spec, next.version), running->pid);
      return;
    }
    if (next.version == r.status.serving.version)
      throw dmm::TerminalError(about(r.spec, next.version) +
                               " serves already with another command, args, env or cwd; give the new spec a new "
                               "version (a rollout never stops the serving version before the new one is healthy)");
    supervisor.stop(*running, milliseconds(r.spec.stop_grace_ms), proc.name);
  }
  next.process = supervisor.start(proc, hash);
  ctx.log().info("{}: started pid {} beside version {} (log {})", about(r.spec, next.version), next.process.pid,
                 r.status.serving.version.empty() ? "(none)" : r.status.serving.version,
                 supervisor.log_path(proc.name).string());
}

void check_health(RolloutMatter& r, dmm::Context& ctx, ProcessSupervisor& supervisor) {
  const auto& next = r.status.next;
  const auto name = process_name(r.spec.name, next.version);
  if (!processes::alive(next.process))  // it will not get healthy: roll back now
    throw dmm::TerminalError(about(r.spec, next.version) + " (pid " + std::to_string(next.process.pid) +
                             ") exited with code " + std::to_string(supervisor.exit_code(name, next.process.pid)) +
                             " before it was healthy; see " + supervisor.log_path(name).string());
  if (!r.spec.health.url.empty())
    probe_url(r.spec);
  else
    probe_command(r.spec, supervisor.log_path(name));
  ctx.log().info("{}: healthy", about(r.spec, next.version));
}

void stop_old(RolloutMatter& r, dmm::Context& ctx, ProcessSupervisor& supervisor) {
  auto& s = r.status;
  if (s.serving.version != s.next.version) stop(r.spec, s.serving, ctx, supervisor);
  ctx.log().info("{}: serves (pid {})", about(r.spec, s.next.version), s.next.process.pid);
  s.serving = s.next;
  s.next = {};
}

}  // namespace

std::string process_name(const std::string& name, const std::string& version) { return name + "@" + version; }

dmm::Result RolloutMatter::materialize(dmm::Context& ctx) {
  check_spec(spec);
  auto& supervisor = ctx.service<ProcessSupervisor>();
  const milliseconds interval(spec.health.interval_ms);
  return dmm::Steps(ctx, *this, progress)
      .step("write-config", [&] { write_config(*this, ctx, supervisor); },
            {.rollback = [&] { restore_config(*this, ctx); }})
      .step("start-new", [&] { start_new(*this, ctx, supervisor); },
            {.rollback = [&] {
               if (status.next.version != status.serving.version) stop(spec, status.next, ctx, supervisor);
             }})
      .step("health-check", [&] { check_health(*this, ctx, supervisor); },
            {.max_attempts = spec.health.attempts,
             .backoff = dmm::Backoff{.initial = interval, .max = interval, .multiplier = 1, .jitter = 0}})
      .step("stop-old", [&] { stop_old(*this, ctx, supervisor); })
      .run();
}

void RolloutMatter::finalize(dmm::Context& ctx) {
  auto& supervisor = ctx.service<ProcessSupervisor>();
  if (status.next.version != status.serving.version) stop(spec, status.next, ctx, supervisor);
  stop(spec, status.serving, ctx, supervisor);
  std::error_code ec;
  for (const auto& path : {spec.config.path, status.serving.config.path})
    if (!path.empty()) fs::remove(path, ec);
}

}  // namespace dmm::controllers::rollouts
