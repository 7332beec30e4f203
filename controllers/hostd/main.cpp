// hostd: a tiny infrastructure daemon built on dmm. It embeds the file,
// process and rollout controllers and takes its desired state from site files.
//
//   hostd run [--dir DESIRED_DIR] [--state-dir DIR] [--http :PORT]
//                           work files, processes and rollouts until SIGINT/SIGTERM; with --dir,
//                           apply every *.json there whenever it changes (a removed
//                           site file deletes its site)
//   hostd apply FILE|DIR    notify the sites' desired state (prunes what a site no
//                           longer declares, unless --no-prune)
//   hostd delete FILE|DIR   remove everything the sites declared
//   hostd status [--json]   every file, process and rollout with its phase and observed
//                           state (a rollout: each step's status)
//   hostd wait [--timeout S] until every matter is ready (exit 1 on timeout)
//
// Managed processes run in sessions of their own and survive hostd; a new
// hostd adopts those whose pid and start time match their record.
// Connection settings: --postgres/--nats, else DMM_POSTGRES_URL/DMM_NATS_URL,
// else the .dmm/env that `scripts/dev-env up` wrote.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <dmm/dev_env.hpp>
#include <dmm/dmm.hpp>
#include <iostream>
#include <spdlog/spdlog.h>
#include <thread>

#include <dmm/controllers/hash.hpp>
#include "hostd/site.hpp"

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using dmm::controllers::files::FileMatter;
using dmm::controllers::processes::ProcessMatter;
using dmm::controllers::rollouts::RolloutMatter;

struct Settings {
  std::string postgres, nats, bucket, log_level = "info";
};

// One bucket per host: processes are adopted by pid, which means nothing elsewhere.
std::string default_bucket() {
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  std::string name = "hostd-";
  for (char c : std::string(host)) name += std::isalnum(static_cast<unsigned char>(c)) || c == '-' ? c : '_';
  return name.substr(0, 64);
}

fs::path default_state_dir() {
  if (::geteuid() == 0) return "/var/lib/hostd";
  const char* home = std::getenv("HOME");
  return fs::path(home ? home : "/tmp") / ".local/state/hostd";
}

dmm::Bucket open_bucket(Settings& s) {
  s.postgres = dmm::required_dev_env_setting(s.postgres, "DMM_POSTGRES_URL", "postgres", "postgres URL");
  s.nats = dmm::required_dev_env_setting(s.nats, "DMM_NATS_URL", "nats", "nats URL");
  // A 1 s token grace bounds how late a lost or superseded token is re-sent:
  // drift must be repaired within about a second.
  auto bucket = dmm::Bucket::open({.name = s.bucket, .postgres = s.postgres, .nats = s.nats, .token_grace = 1000ms});
  const dmm::KindOptions kind{.concurrency = 8, .backoff = {.initial = 200ms, .max = 10'000ms}};
  bucket.register_kind<FileMatter>(dmm::controllers::files::kKind, kind);
  bucket.register_kind<ProcessMatter>(dmm::controllers::processes::kKind, kind);
  bucket.register_kind<RolloutMatter>(dmm::controllers::rollouts::kKind, kind);
  return bucket;
}

// Applies the site files in `dir` whenever one changes; a removed one deletes its site.
void watch_desired_dir(dmm::Bucket& bucket, const std::string& postgres, const fs::path& dir, std::stop_token stop) {
  std::map<fs::path, std::pair<std::string, std::string>> applied;  // file -> (content hash, site name)
  while (!stop.stop_requested()) {
    std::set<fs::path> present;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
      if (entry.path().extension() != ".json") continue;
      present.insert(entry.path());
      const auto hash = dmm::controllers::file_hash(entry.path()).value_or("");
      if (applied.contains(entry.path()) && applied[entry.path()].first == hash) continue;
      try {
        auto site = hostd::parse_site(entry.path());
        std::ostringstream out;
        hostd::apply_site(bucket, postgres, site, true, out);
        spdlog::info("applied {} (site '{}'):\n{}", entry.path().string(), site.name, out.str());
        applied[entry.path()] = {hash, site.name};
      } catch (const std::exception& e) {
        spdlog::error("{} (keeping what was applied before; fix the file)", e.what());
        applied[entry.path()].first = hash;  // retried when the file changes
      }
    }
    if (ec) spdlog::warn("cannot read desired-state directory {}: {}", dir.string(), ec.message());
    for (auto it = applied.begin(); !ec && it != applied.end();) {
      if (present.contains(it->first) || it->second.second.empty()) {
        ++it;
        continue;
      }
      try {
        std::ostringstream out;
        hostd::delete_site(bucket, postgres, it->second.second, out);
        spdlog::info("{} was removed: deleted site '{}':\n{}", it->first.string(), it->second.second, out.str());
        it = applied.erase(it);
      } catch (const std::exception& e) {
        spdlog::error("cannot delete site '{}': {}", it->second.second, e.what());
        ++it;
      }
    }
    for (int i = 0; i < 10 && !stop.stop_requested(); ++i) std::this_thread::sleep_for(100ms);
  }
}

int run(Settings& s, const std::string& dir, const fs::path& state_dir, const std::string& http) {
  dmm::StopSignals signals;  // before any thread starts

  auto bucket = open_bucket(s);
  using dmm::controllers::files::FileObserver;
  using dmm::controllers::processes::ProcessSupervisor;
  auto files = std::make_shared<FileObserver>(bucket, FileObserver::Options{.postgres = s.postgres});
  auto processes = std::make_shared<ProcessSupervisor>(
      bucket, ProcessSupervisor::Options{.state_dir = state_dir, .postgres = s.postgres});
  bucket.provide(files);
  bucket.provide(processes);
  // Declared after the bucket: stopped and joined before it is destroyed.
  std::jthread file_observer([&](std::stop_token st) { files->observe(st); });
  std::jthread process_observer([&](std::stop_token st) { processes->observe(st); });
  std::jthread desired;
  if (!dir.empty())
    desired = std::jthread([&](std::stop_token st) { watch_desired_dir(bucket, s.postgres, dir, st); });
  // DMM_HTTP_TOKEN turns on the web view's retry and remove (docs/OPERATIONS.md).
  if (!http.empty())
    spdlog::info("serving /metrics, /healthz, /readyz and the web view on port {}",
                 bucket.serve_http(http, dmm::HttpOptions::from_env()));
  spdlog::info("hostd running: bucket '{}', state dir {}{}", s.bucket, state_dir.string(),
               dir.empty() ? "" : ", desired state from " + dir);
  signals.run(bucket, [](int sig) {
    spdlog::info("received {}: stopping (managed processes keep running)", sig == SIGINT ? "SIGINT" : "SIGTERM");
  });
  desired = {};
  file_observer = {};
  process_observer = {};
  spdlog::info("hostd stopped");
  return 0;
}

// A rollout: the serving version, the one rolling out, and a line per step.
std::string describe_rollout(const RolloutMatter& r) {
  auto version = [](const dmm::controllers::rollouts::Version& v) {
    return v.version + (v.process.pid ? " pid " + std::to_string(v.process.pid) : "");
  };
  std::string out = r.status.serving.version.empty() ? "serving none" : "serving " + version(r.status.serving);
  if (!r.status.next.version.empty() && r.status.next.version != r.status.serving.version)
    out += ", rolling out " + version(r.status.next);
  out += "\n" + std::string(11, ' ') + "rollout to " + r.spec.version + ": " + r.progress.phase;
  for (const auto& step : r.progress.steps) {
    const auto pad = step.name.size() < 14 ? 14 - step.name.size() : 1;
    out += "\n" + std::string(13, ' ') + step.name + std::string(pad, ' ') + step.status;
    if (step.attempts) out += " (" + std::to_string(step.attempts) + " failed)";
    if (!step.last_error.empty()) out += ": " + step.last_error;
  }
  return out;
}

std::string describe_state(const std::string& kind, const nlohmann::json& state) {
  if (kind == dmm::controllers::rollouts::kKind) return describe_rollout(state.get<RolloutMatter>());
  if (kind == dmm::controllers::files::kKind) {
    const auto f = state.get<FileMatter>();
    if (!f.observed.exists) return "missing";
    return "exists mode " + f.observed.mode + " owner " + f.observed.owner + " hash " + f.observed.hash;
  }
  const auto p = state.get<ProcessMatter>();
  std::string out = p.status.phase;
  if (p.status.pid) out += " pid " + std::to_string(p.status.pid);
  out += " restarts " + std::to_string(p.status.restarts);
  if (p.status.exit_code >= 0) out += " last exit " + std::to_string(p.status.exit_code);
  return out;
}

std::vector<dmm::MatterStatus> all_matters(const Settings& s) {
  return dmm::inspect({.postgres = s.postgres, .bucket = s.bucket, .limit = 1'000'000});
}

int status(Settings& s, bool as_json) {
  open_bucket(s);  // resolves the settings and checks the schema
  auto matters = all_matters(s);
  if (as_json) {
    auto out = nlohmann::json::array();
    for (const auto& m : matters)
      out.push_back({{"kind", m.kind}, {"identity", m.identity}, {"phase", m.phase}, {"last_error", m.last_error},
                     {"state", nlohmann::json::parse(m.state)}});
    std::cout << out.dump(2) << "\n";
    return 0;
  }
  std::printf("%-8s %-40s %-10s %s\n", "KIND", "IDENTITY", "PHASE", "OBSERVED");
  for (const auto& m : matters) {
    std::printf("%-8s %-40s %-10s %s\n", m.kind.c_str(), m.identity.c_str(), m.phase.c_str(),
                describe_state(m.kind, nlohmann::json::parse(m.state)).c_str());
    if (!m.last_error.empty()) std::printf("%-8s   last error: %s\n", "", m.last_error.c_str());
  }
  return 0;
}

int wait_ready(Settings& s, int timeout_s) {
  open_bucket(s);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  for (;;) {
    auto matters = all_matters(s);
    std::size_t ready = 0;
    for (const auto& m : matters) ready += m.phase == "ready" && m.generation == m.materialized_generation;
    if (ready == matters.size()) {
      std::cout << "ready " << ready << "/" << matters.size() << "\n";
      return 0;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      std::cerr << "not ready after " << timeout_s << " s: " << ready << "/" << matters.size()
                << " (see hostd status)\n";
      return 1;
    }
    std::this_thread::sleep_for(200ms);
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"hostd: files, processes and rollouts kept as declared, on dmm"};
  app.require_subcommand(1);
  Settings s;
  s.bucket = default_bucket();
  app.add_option("--postgres", s.postgres, "PostgreSQL URL (default: $DMM_POSTGRES_URL or .dmm/env)");
  app.add_option("--nats", s.nats, "NATS URL (default: $DMM_NATS_URL or .dmm/env)");
  app.add_option("--bucket", s.bucket, "bucket name (one per host)")->capture_default_str();
  app.add_option("--log-level", s.log_level, "trace, debug, info, warn, error")->capture_default_str();

  auto* run_cmd = app.add_subcommand("run", "work files, processes and rollouts until SIGINT/SIGTERM");
  std::string dir, http;
  fs::path state_dir = default_state_dir();
  run_cmd->add_option("--dir", dir, "apply the site files (*.json) in this directory whenever they change");
  run_cmd->add_option("--state-dir", state_dir, "process logs and records")->capture_default_str();
  run_cmd->add_option("--http", http, "serve /metrics, /healthz, /readyz and the web view on [host]:PORT");

  auto* apply_cmd = app.add_subcommand("apply", "notify the desired state of site files");
  std::string target;
  bool no_prune = false;
  apply_cmd->add_option("FILE|DIR", target, "a site file or a directory of them")->required();
  apply_cmd->add_flag("--no-prune", no_prune, "keep matters of the site that the file no longer declares");

  auto* delete_cmd = app.add_subcommand("delete", "remove everything the site files declared");
  delete_cmd->add_option("FILE|DIR", target, "a site file or a directory of them")->required();

  auto* status_cmd =
      app.add_subcommand("status", "every file, process and rollout with its phase and observed state");
  bool as_json = false;
  status_cmd->add_flag("--json", as_json, "print JSON");

  auto* wait_cmd = app.add_subcommand("wait", "wait until every matter is ready");
  int timeout_s = 60;
  wait_cmd->add_option("--timeout", timeout_s, "seconds before giving up (exit 1)")->capture_default_str();

  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::from_str(s.log_level));
  try {
    if (run_cmd->parsed()) return run(s, dir, fs::absolute(state_dir), http);
    if (status_cmd->parsed()) return status(s, as_json);
    if (wait_cmd->parsed()) return wait_ready(s, timeout_s);
    auto sites = hostd::parse_sites(target);  // all parsed before anything is applied
    auto bucket = open_bucket(s);
    for (const auto& site : sites) {
      std::cout << "site " << site.name << " (" << site.file.string() << ")\n";
      if (apply_cmd->parsed()) hostd::apply_site(bucket, s.postgres, site, !no_prune, std::cout);
      if (delete_cmd->parsed()) hostd::delete_site(bucket, s.postgres, site.name, std::cout);
    }
    return 0;
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return 1;
  }
}
