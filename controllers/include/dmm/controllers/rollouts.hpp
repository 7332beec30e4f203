// The rollout controller: a new version of a process replaces the old one
// with no gap in service, written as a dmm::Steps action (dmm/steps.hpp):
//
//   write-config  write the new version's configuration file
//                 (rollback: the serving version's configuration back)
//   start-new     start the new version beside the old one, e.g. on a new port
//                 (rollback: stop it)
//   health-check  probe an HTTP URL or run a command until it passes, with its
//                 own interval and attempts
//   stop-old      stop the old version; the new one is now the serving one
//
// Copy this as the template for an action of several steps. What it shows:
// - each step is idempotent (a step that was running when hostd died runs
//   again): start-new adopts the process it started before (its pid file);
// - a step's outputs are fields of the matter (`status.next`), stored with
//   the step's completion, for later steps and rollbacks to read;
// - the old version is stopped only by stop-old, after the new one passed its
//   health check: when the check runs out of attempts, the completed steps
//   roll back newest first (the new process stopped, the configuration
//   restored), the matter is failed, and the old version served throughout;
// - a new goal (a new version notified mid-way) starts the list over, and
//   write-config first stops a version the abandoned rollout had started.
// Processes are started, stopped and found again after a restart through the
// process controller's ProcessSupervisor (give it to the bucket with
// Bucket::provide). A version runs as "<name>@<version>", with its output in
// <state-dir>/logs/<name>@<version>.log. Unlike a ProcessMatter, a version
// that exits after its rollout is not restarted. finalize (after
// Bucket::remove) stops every version and deletes the configuration file.
#pragma once

#include <dmm/dmm.hpp>
#include <dmm/steps.hpp>
#include <map>
#include <string>
#include <vector>

#include <dmm/controllers/processes.hpp>

namespace dmm::controllers::rollouts {

// The kind name hostd registers RolloutMatter under.
inline constexpr const char* kKind = "rollout";

// The configuration file a version reads. Empty path: none.
struct ConfigFile {
  std::string path{};  // absolute
  std::string content{};
  friend bool operator==(const ConfigFile&, const ConfigFile&) = default;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(ConfigFile, path, content)

// How to tell that the new version is healthy: set `url` or `command`.
struct HealthCheck {
  std::string url{};                   // http://host:port/path: healthy on a 2xx answer
  std::vector<std::string> command{};  // or: healthy when it exits 0 (run in the version's cwd and env)
  int timeout_ms = 1000;               // per probe
  int interval_ms = 500;               // between failed probes
  int attempts = 20;                   // failed probes before the rollout rolls back; 0: never give up
  friend bool operator==(const HealthCheck&, const HealthCheck&) = default;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(HealthCheck, url, command, timeout_ms, interval_ms, attempts)

// The version that should serve.
struct RolloutSpec {
  std::string name{};     // [A-Za-z0-9._-]+; the identity
  std::string version{};  // [A-Za-z0-9._-]+; a new version is a new rollout
  std::string command{};  // a path, or a name looked up in PATH
  std::vector<std::string> args{};
  std::map<std::string, std::string> env{};  // on top of PATH and LANG, as for a ProcessSpec
  std::string cwd = "/";                     // absolute
  ConfigFile config{};
  HealthCheck health{};
  int stop_grace_ms = 5000;  // SIGTERM, then SIGKILL after this long
  std::string site{};        // who declared it (hostd's site name, for pruning)
  friend bool operator==(const RolloutSpec&, const RolloutSpec&) = default;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(RolloutSpec, name, version, command, args, env, cwd, config, health,
                                                stop_grace_ms, site)

// A version as started: what it runs with, and its process.
struct Version {
  std::string version{};  // empty: none
  ConfigFile config{};    // the configuration it was started with
  processes::ProcessStatus process{};
  friend bool operator==(const Version&, const Version&) = default;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(Version, version, config, process)

struct RolloutStatus {
  Version serving{};  // the version that passed its health check last
  Version next{};     // the version being rolled out (empty when none is)
  friend bool operator==(const RolloutStatus&, const RolloutStatus&) = default;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(RolloutStatus, serving, next)

struct RolloutMatter {
  RolloutSpec spec{};
  RolloutStatus status{};
  dmm::StepProgress progress{};  // the steps of the current rollout (dmmctl describe, hostd status)

  std::string identity() const { return spec.name; }
  dmm::Result materialize(dmm::Context& ctx);
  void finalize(dmm::Context& ctx);
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(RolloutMatter, spec, status, progress)

// The process name a version runs under: "<name>@<version>".
std::string process_name(const std::string& name, const std::string& version);

}  // namespace dmm::controllers::rollouts
