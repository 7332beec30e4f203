// ProcessSupervisor: start processes in sessions of their own, stop them, and
// record their exits. Between fork and exec only async-signal-safe calls are
// made: hostd is multi-threaded.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <spdlog/spdlog.h>
#include <thread>

#include <dmm/controllers/processes.hpp>

namespace dmm::controllers::processes {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

struct Stat {
  char state = '?';
  int pgrp = 0;
  std::uint64_t start_time = 0;
};

// /proc/<pid>/stat: state (field 3), pgrp (5), starttime (22). The command
// name (field 2) may hold spaces and parentheses: parse after the last ')'.
std::optional<Stat> read_stat(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return std::nullopt;
  const auto close = line.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream rest(line.substr(close + 1));
  Stat s;
  std::string field;
  rest >> s.state;
  for (int i = 4; i <= 22 && rest >> field; ++i) {
    if (i == 5) s.pgrp = std::stoi(field);
    if (i == 22) s.start_time = std::stoull(field);
  }
  return s;
}

const std::string& boot_id() {
  static const std::string id = [] {
    std::ifstream in("/proc/sys/kernel/random/boot_id");
    std::string s;
    std::getline(in, s);
    return s;
  }();
  return id;
}

std::string safe_name_error(const std::string& name, const std::string& what) {
  return "process '" + name + "': " + what + ": " + std::strerror(errno);
}

// The executable for `command`: as given if it has a '/', else the first
// match in PATH.
std::string resolve_command(const ProcessSpec& spec, const std::string& path_var) {
  if (spec.command.find('/') != std::string::npos) {
    fs::path p = fs::path(spec.command).is_absolute() ? fs::path(spec.command) : fs::path(spec.cwd) / spec.command;
    if (::access(p.c_str(), X_OK) == 0) return p.string();
    throw std::runtime_error("process '" + spec.name + "': command '" + p.string() + "' is not executable");
  }
  std::istringstream dirs(path_var);
  for (std::string dir; std::getline(dirs, dir, ':');) {
    const fs::path p = fs::path(dir.empty() ? "." : dir) / spec.command;
    if (::access(p.c_str(), X_OK) == 0) return p.string();
  }
  throw std::runtime_error("process '" + spec.name + "': command '" + spec.command + "' not found in PATH " + path_var);
}

// Closes every descriptor from `low` up (close_range, or a loop on old kernels).
void close_from(int low) {
  if (::close_range(static_cast<unsigned>(low), ~0U, 0) == 0) return;
  for (int fd = low; fd < 65536; ++fd) ::close(fd);
}

void default_signals() {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGCHLD, SIGQUIT}) ::sigaction(sig, &dfl, nullptr);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
}

// Decimal digits of `v` into `out`, returns the new end. Async-signal-safe.
char* put_int(char* out, long v) {
  if (v < 0) {
    *out++ = '-';
    v = -v;
  }
  char tmp[24];
  int n = 0;
  do tmp[n++] = static_cast<char>('0' + v % 10);
  while ((v /= 10) > 0);
  while (n > 0) *out++ = tmp[--n];
  return out;
}

// The session leader: runs the command as its child, waits for it and
// records "<pid> <exit code>" in `exit_file` (written to `exit_tmp`, renamed).
[[noreturn]] void session_leader(const char* exe, char* const* argv, char* const* envp, const char* cwd, int log_fd,
                                 int null_fd, int report_fd, const char* exit_tmp, const char* exit_file) {
  ::setsid();
  const pid_t child = ::fork();
  if (child == 0) {
    ::dup2(null_fd, 0);
    ::dup2(log_fd, 1);
    ::dup2(log_fd, 2);
    close_from(3);
    default_signals();
    if (::chdir(cwd) != 0) {
      static const char msg[] = "hostd: cannot chdir to the process's cwd\n";
      (void)!::write(2, msg, sizeof msg - 1);
      ::_exit(126);
    }
    ::execve(exe, argv, envp);
    static const char msg[] = "hostd: exec failed\n";
    (void)!::write(2, msg, sizeof msg - 1);
    ::_exit(127);
  }
  (void)!::write(report_fd, &child, sizeof child);
  ::dup2(null_fd, 0);
  ::dup2(null_fd, 1);
  ::dup2(null_fd, 2);
  close_from(3);
  struct sigaction ign {};
  ign.sa_handler = SIG_IGN;  // SIGTERM to the group stops the command; we stay to record its exit
  for (int sig : {SIGTERM, SIGINT, SIGHUP}) ::sigaction(sig, &ign, nullptr);
  if (child < 0) ::_exit(1);
  int st = 0;
  while (::waitpid(child, &st, 0) < 0 && errno == EINTR) {
  }
  const long code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  char buf[64];
  char* end = put_int(buf, child);
  *end++ = ' ';
  end = put_int(end, code);
  *end++ = '\n';
  const int fd = ::open(exit_tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd >= 0) {
    (void)!::write(fd, buf, static_cast<std::size_t>(end - buf));
    ::close(fd);
    ::rename(exit_tmp, exit_file);
  }
  ::_exit(0);
}

void write_file_atomically(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text;
    if (!out) throw std::runtime_error("cannot write '" + tmp.string() + "'");
  }
  fs::rename(tmp, path);
}

}  // namespace

bool alive(const ProcessStatus& s) {
  if (s.pid <= 0 || s.boot_id != boot_id()) return false;
  auto st = read_stat(s.pid);
  return st && st->state != 'Z' && st->state != 'X' && st->start_time == s.start_time;
}

void record_exit(ProcessStatus& s, int exit_code) {
  s.phase = "exited";
  s.exit_code = exit_code;
  s.exited_at_ms = now_ms();
  s.crash_streak = s.exited_at_ms - s.started_at_ms < 10'000 ? s.crash_streak + 1 : 0;
}

ProcessSupervisor::ProcessSupervisor(dmm::Bucket& bucket, Options options)
    : bucket_(bucket), options_(std::move(options)) {
  fs::create_directories(options_.state_dir / "logs");
  fs::create_directories(options_.state_dir / "run");
}

fs::path ProcessSupervisor::log_path(const std::string& name) const {
  return options_.state_dir / "logs" / (name + ".log");
}

std::optional<ProcessStatus> ProcessSupervisor::find_running(const ProcessSpec& spec, const ProcessStatus& recorded) {
  if (alive(recorded)) return recorded;
  std::ifstream in(options_.state_dir / "run" / (spec.name + ".json"));
  if (!in) return std::nullopt;
  try {
    auto from_file = nlohmann::json::parse(in).get<ProcessStatus>();
    if (alive(from_file)) return from_file;
  } catch (const nlohmann::json::exception&) {
    // a torn record is no process
  }
  return std::nullopt;
}

ProcessStatus ProcessSupervisor::start(const ProcessSpec& spec, const std::string& spec_hash) {
  // Everything the children need is prepared here: after fork, no allocation.
  std::map<std::string, std::string> env;
  const char* path = std::getenv("PATH");
  env["PATH"] = path ? path : "/usr/local/bin:/usr/bin:/bin";
  const char* lang = std::getenv("LANG");
  env["LANG"] = lang ? lang : "C.UTF-8";
  for (const auto& [k, v] : spec.env) env[k] = v;
  const std::string exe = resolve_command(spec, env["PATH"]);
  std::vector<std::string> args{spec.command};
  args.insert(args.end(), spec.args.begin(), spec.args.end());
  std::vector<std::string> env_strings;
  for (const auto& [k, v] : env) env_strings.push_back(k + "=" + v);
  std::vector<char*> argv, envp;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  const fs::path run = options_.state_dir / "run";
  const std::string exit_file = (run / (spec.name + ".exit")).string(), exit_tmp = exit_file + ".tmp";
  fs::create_directories(run);
  fs::create_directories(log_path(spec.name).parent_path());

  const int log_fd = ::open(log_path(spec.name).c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) throw std::runtime_error(safe_name_error(spec.name, "cannot open " + log_path(spec.name).string()));
  const std::string banner = "==> hostd: starting " + exe + " (spec " + spec_hash + ")\n";
  (void)!::write(log_fd, banner.data(), banner.size());
  const int null_fd = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  int report[2];
  if (null_fd < 0 || ::pipe2(report, O_CLOEXEC) != 0) {
    ::close(log_fd);
    if (null_fd >= 0) ::close(null_fd);
    throw std::runtime_error(safe_name_error(spec.name, "cannot prepare the start"));
  }

  // Double fork: the session leader is reparented away from hostd, so the
  // process outlives hostd and is never its zombie.
  const pid_t first = ::fork();
  if (first == 0) {
    if (::fork() == 0)
      session_leader(exe.c_str(), argv.data(), envp.data(), spec.cwd.c_str(), log_fd, null_fd, report[1],
                     exit_tmp.c_str(), exit_file.c_str());
    ::_exit(0);
  }
  ::close(report[1]);
  ::close(log_fd);
  ::close(null_fd);
  if (first < 0) {
    ::close(report[0]);
    throw std::runtime_error(safe_name_error(spec.name, "fork"));
  }
  int st = 0;
  while (::waitpid(first, &st, 0) < 0 && errno == EINTR) {
  }
  pid_t pid = -1;
  pollfd pfd{.fd = report[0], .events = POLLIN, .revents = 0};
  if (::poll(&pfd, 1, 5000) <= 0 || ::read(report[0], &pid, sizeof pid) != sizeof pid) pid = -1;
  ::close(report[0]);
  if (pid <= 0) throw std::runtime_error("process '" + spec.name + "': the start did not report a pid");

  ProcessStatus s;
  s.phase = "running";
  s.pid = pid;
  s.boot_id = boot_id();
  s.spec_hash = spec_hash;
  s.started_at_ms = now_ms();
  if (auto stat = read_stat(pid)) {  // gone already: start_time 0 never matches, the exit is recorded
    s.pgid = stat->pgrp;
    s.start_time = stat->start_time;
  }
  // The pid file is what a new hostd adopts from if this one dies before the
  // matter's state is written back.
  write_file_atomically(run / (spec.name + ".json"), nlohmann::json(s).dump());
  return s;
}

void ProcessSupervisor::stop(const ProcessStatus& s, std::chrono::milliseconds grace, const std::string& name) {
  auto signal_it = [&](int sig) {
    auto st = read_stat(s.pid);
    // The whole group (the command, its children, the session leader), if the
    // command is still in the group it was started in.
    if (st && s.pgid > 1 && st->pgrp == s.pgid)
      ::kill(-s.pgid, sig);
    else
      ::kill(s.pid, sig);
  };
  auto gone_within = [&](std::chrono::milliseconds d) {
    const auto deadline = std::chrono::steady_clock::now() + d;
    while (alive(s)) {
      if (std::chrono::steady_clock::now() >= deadline) return false;
      std::this_thread::sleep_for(20ms);
    }
    return true;
  };
  if (!alive(s)) return;
  signal_it(SIGTERM);
  if (gone_within(grace)) return;
  spdlog::warn("process '{}': pid {} ignored SIGTERM for {} ms: SIGKILL", name, s.pid, grace.count());
  signal_it(SIGKILL);
  if (!gone_within(5s)) throw std::runtime_error("process '" + name + "': pid " + std::to_string(s.pid) + " survives SIGKILL");
}

int ProcessSupervisor::exit_code(const std::string& name, int pid) {
  // The session leader writes the record right after the exit: give it a moment.
  const auto deadline = std::chrono::steady_clock::now() + 300ms;
  do {
    std::ifstream in(options_.state_dir / "run" / (name + ".exit"));
    int recorded_pid = 0, code = -1;
    if (in >> recorded_pid >> code && recorded_pid == pid) return code;
    std::this_thread::sleep_for(20ms);
  } while (std::chrono::steady_clock::now() < deadline);
  return -1;
}

void ProcessSupervisor::remove_records(const std::string& name) {
  std::error_code ec;
  fs::remove(options_.state_dir / "run" / (name + ".json"), ec);
  fs::remove(options_.state_dir / "run" / (name + ".exit"), ec);
}

void ProcessSupervisor::watch(const std::string& name, const ProcessStatus& s) {
  std::lock_guard lock(mu_);
  watched_[name] = s;
}

void ProcessSupervisor::forget(const std::string& name) {
  std::lock_guard lock(mu_);
  watched_.erase(name);
}

void ProcessSupervisor::observe(std::stop_token stop) {
  auto next_resync = std::chrono::steady_clock::now();
  while (!stop.stop_requested()) {
    try {
      if (std::chrono::steady_clock::now() >= next_resync) {
        resync();
        next_resync = std::chrono::steady_clock::now() + options_.resync;
      }
      std::vector<std::string> dead;
      {
        std::lock_guard lock(mu_);
        for (const auto& [name, s] : watched_)
          if (s.phase == "running" && !alive(s)) dead.push_back(name);
      }
      for (const auto& name : dead) refresh(name);
    } catch (const std::exception& e) {
      spdlog::warn("process supervisor: cannot record a process's state (retrying): {}", e.what());
      next_resync = std::chrono::steady_clock::now() + options_.resync;
    }
    std::this_thread::sleep_for(options_.poll);
  }
}

// Records the absolute state of one process: if the stored pid runs no more,
// its exit. Holds mu_ across the update so that forget() waits for it.
void ProcessSupervisor::refresh(const std::string& name) {
  std::lock_guard lock(mu_);
  if (!watched_.contains(name)) return;  // forgotten: being stopped
  ProcessStatus after;
  const bool exists = bucket_.update<ProcessMatter>(name, [&](ProcessMatter& p) {
    if (p.status.phase == "running" && !alive(p.status)) {
      record_exit(p.status, exit_code(name, p.status.pid));
      spdlog::info("process '{}': pid {} exited with code {}", name, p.status.pid, p.status.exit_code);
    }
    after = p.status;
  });
  if (!exists)
    watched_.erase(name);
  else
    watched_[name] = after;
}

// Lists every stored process and watches it: after a restart of hostd, the
// processes that died meanwhile are found here.
void ProcessSupervisor::resync() {
  const auto stored = dmm::inspect({.postgres = options_.postgres, .bucket = bucket_.name(),
                                    .kind = bucket_.kind<ProcessMatter>(), .limit = 1'000'000});
  std::lock_guard lock(mu_);
  for (const auto& m : stored) {
    if (m.removing) continue;  // finalize stops it; its exit is no crash
    watched_[m.identity] = nlohmann::json::parse(m.state).get<ProcessMatter>().status;
  }
}

}  // namespace dmm::controllers::processes
