// The process controller: desired long-running processes (command, args, env,
// working directory, restart policy) started and kept running.
//
// Copy this as a template. The halves of the pattern:
// - ProcessMatter::materialize makes reality match `spec`: it adopts a live
//   process it started before (same pid *and* start time, so a recycled pid
//   is never mistaken for ours), replaces one whose spec changed, restarts
//   one that exited (per the restart policy, a crash loop backing off with
//   dmm's retry schedule), and waits for its dependencies (files) first;
// - ProcessSupervisor is its observer: it watches the recorded pids and, when
//   one dies, records the exit (code, time) with Bucket::update, which makes
//   dmm materialize the matter again.
// Processes run in their own session, outside hostd: a hostd that stops or
// crashes leaves them running, and the next one adopts them. Output goes to
// <state-dir>/logs/<name>.log. finalize (after Bucket::remove) stops the
// process group: SIGTERM, then SIGKILL after spec.stop_grace_ms.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <dmm/dmm.hpp>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

namespace dmm::controllers::processes {

// The kind name hostd registers ProcessMatter under.
inline constexpr const char* kKind = "process";

// A matter this process needs ready before it starts. Kind "file" with the
// file's path as identity, by default.
struct Need {
  std::string kind = "file";
  std::string identity{};
  friend bool operator==(const Need&, const Need&) = default;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(Need, kind, identity)

// What should run.
struct ProcessSpec {
  std::string name{};                     // [A-Za-z0-9._-]+; the identity, and the log file's name
  std::string command{};                  // a path, or a name looked up in PATH
  std::vector<std::string> args{};
  std::map<std::string, std::string> env{};  // on top of PATH and LANG; nothing else is inherited
  std::string cwd = "/";                  // absolute
  std::string restart = "always";         // always | on-failure | never
  std::vector<Need> depends_on{};
  int stop_grace_ms = 5000;  // SIGTERM, then SIGKILL after this long
  std::string site{};        // who declared it (hostd's site name, for pruning)
  friend bool operator==(const ProcessSpec&, const ProcessSpec&) = default;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(ProcessSpec, name, command, args, env, cwd, restart, depends_on,
                                                stop_grace_ms, site)

// What runs, as recorded by materialize (start, adopt) and the supervisor (exit).
struct ProcessStatus {
  std::string phase = "stopped";  // stopped (never started) | running | exited
  int pid = 0;
  int pgid = 0;                   // its process group (the session the supervisor made)
  std::uint64_t start_time = 0;   // /proc/<pid>/stat field 22: with pid, names the process
  std::string boot_id{};          // /proc/sys/kernel/random/boot_id: start times restart at boot
  std::string spec_hash{};        // of the command, args, env and cwd it was started with
  int exit_code = -1;             // of the last exit: 0-255, 128+N for signal N, -1 unknown
  int restarts = 0;               // starts after an exit (not counting spec changes)
  int crash_streak = 0;           // exits in a row within 10 s of starting (backoff grows with it)
  std::int64_t started_at_ms = 0; // Unix time
  std::int64_t exited_at_ms = 0;
  friend bool operator==(const ProcessStatus&, const ProcessStatus&) = default;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(ProcessStatus, phase, pid, pgid, start_time, boot_id, spec_hash,
                                                exit_code, restarts, crash_streak, started_at_ms, exited_at_ms)

struct ProcessMatter {
  ProcessSpec spec{};
  ProcessStatus status{};

  std::string identity() const { return spec.name; }
  std::vector<dmm::Dependency> dependencies() const;
  dmm::Result materialize(dmm::Context& ctx);
  void finalize(dmm::Context& ctx);
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(ProcessMatter, spec, status)

// True if `s` names a live process: same pid, start time and boot, not a zombie.
bool alive(const ProcessStatus& s);

// Records in `s` that its process exited with `exit_code` (-1: unknown) now;
// an exit within 10 s of starting lengthens the crash streak, a later one
// resets it.
void record_exit(ProcessStatus& s, int exit_code);

// Starts, stops and watches processes; the observer half of the controller.
// Give it to the bucket (bucket.provide) and run observe() on a thread
// declared after the bucket.
class ProcessSupervisor {
 public:
  struct Options {
    std::filesystem::path state_dir;  // logs/<name>.log and run/<name>.{json,exit}
    std::string postgres;             // to list the stored processes at start and each resync
    std::chrono::milliseconds poll{200};
    std::chrono::milliseconds resync{5'000};
  };
  ProcessSupervisor(dmm::Bucket& bucket, Options options);

  // Records exits until `stop` is requested. Call once.
  void observe(std::stop_token stop);

  // The process last started for `spec.name` by any supervisor on this state
  // dir, if it still runs (its pid file survives hostd crashes).
  std::optional<ProcessStatus> find_running(const ProcessSpec& spec, const ProcessStatus& recorded);
  // Starts `spec` in a session of its own; throws if it cannot.
  ProcessStatus start(const ProcessSpec& spec, const std::string& spec_hash);
  // SIGTERM to the process group, SIGKILL after the grace; throws if it survives.
  void stop(const ProcessStatus& s, std::chrono::milliseconds grace, const std::string& name);
  // The exit code the session leader recorded for `pid`, or -1.
  int exit_code(const std::string& name, int pid);
  // Deletes the pid and exit records of `name` (finalize; the log stays).
  void remove_records(const std::string& name);
  std::filesystem::path log_path(const std::string& name) const;

  // Called by materialize: watch this process from now on.
  void watch(const std::string& name, const ProcessStatus& s);
  // Called by finalize before stopping: its exit is not a crash to report.
  void forget(const std::string& name);

 private:
  void refresh(const std::string& name);
  void resync();

  dmm::Bucket& bucket_;
  const Options options_;
  // Protected by mu_, which is also held across each Bucket::update of
  // refresh(): forget() returning means no report of that name is running.
  std::mutex mu_;
  std::map<std::string, ProcessStatus> watched_;
};

}  // namespace dmm::controllers::processes
