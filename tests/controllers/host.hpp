// A host for the controller tests: a bucket with the controllers registered
// (test-sized timings), their observers and workers running, and a temp dir
// for files, logs and process records. Everything stops, and every process
// it started is killed, when it goes out of scope.
#pragma once

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>

#include <dmm/controllers/files.hpp>
#include <dmm/controllers/processes.hpp>
#include <dmm/controllers/rollouts.hpp>

#include "harness.hpp"

namespace ctl_test {

namespace fs = std::filesystem;
using dmm::controllers::files::FileMatter;
using dmm::controllers::processes::ProcessMatter;
using dmm::controllers::rollouts::RolloutMatter;
using namespace std::chrono_literals;

// A fresh directory under /tmp, deleted with everything in it.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "dmm-ctl-XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }
  std::string operator/(const std::string& rel) const { return (path_ / rel).string(); }

 private:
  fs::path path_;
};

// Kills (SIGKILL, whole group) every process whose pid file is under
// `state_dir`/run: the RAII cleanup for processes a test started.
inline void kill_recorded_processes(const fs::path& state_dir) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(state_dir / "run", ec)) {
    if (entry.path().extension() != ".json") continue;
    try {
      std::ifstream in(entry.path());
      auto s = nlohmann::json::parse(in).get<dmm::controllers::processes::ProcessStatus>();
      if (!dmm::controllers::processes::alive(s)) continue;
      ::kill(s.pgid > 1 ? -s.pgid : s.pid, SIGKILL);
    } catch (const std::exception&) {
    }
  }
}

struct ProcessKiller {
  fs::path state_dir;
  ~ProcessKiller() { kill_recorded_processes(state_dir); }
};

// A bucket with the file, process and rollout controllers running in this process.
class Host {
 public:
  // `bucket`: reuse a name to take over from a previous Host; `state_dir`:
  // reuse one to adopt its processes.
  Host(std::string bucket, fs::path state_dir)
      : name_(std::move(bucket)), state_dir_(std::move(state_dir)), bucket_(dmm_test::open_bucket(name_)) {
    auto kind = dmm_test::fast_kind();
    bucket_.register_kind<FileMatter>(dmm::controllers::files::kKind, kind);
    bucket_.register_kind<ProcessMatter>(dmm::controllers::processes::kKind, kind);
    bucket_.register_kind<RolloutMatter>(dmm::controllers::rollouts::kKind, kind);
    const auto pg = dmm_test::servers().postgres;
    files_ = std::make_shared<dmm::controllers::files::FileObserver>(bucket_, dmm::controllers::files::FileObserver::Options{
                                                                              .postgres = pg, .resync = 30s});
    processes_ = std::make_shared<dmm::controllers::processes::ProcessSupervisor>(
        bucket_, dmm::controllers::processes::ProcessSupervisor::Options{.state_dir = state_dir_, .postgres = pg});
    bucket_.provide(files_);
    bucket_.provide(processes_);
    file_thread_ = std::jthread([this](std::stop_token st) { files_->observe(st); });
    process_thread_ = std::jthread([this](std::stop_token st) { processes_->observe(st); });
    runner_ = std::make_unique<dmm_test::Runner>(bucket_);
  }
  ~Host() { stop(); }

  // Stops workers and observers (a clean stop of hostd: processes keep running).
  void stop() {
    if (runner_) runner_->stop();
    runner_.reset();
    file_thread_ = {};
    process_thread_ = {};
  }

  dmm::Bucket& bucket() { return bucket_; }
  const std::string& name() const { return name_; }
  const fs::path& state_dir() const { return state_dir_; }
  dmm::controllers::processes::ProcessSupervisor& supervisor() { return *processes_; }

  std::optional<ProcessMatter> process(const std::string& name) { return bucket_.get<ProcessMatter>(name); }
  std::optional<RolloutMatter> rollout(const std::string& name) { return bucket_.get<RolloutMatter>(name); }
  std::string phase(const std::string& kind, const std::string& identity) {
    return dmm_test::query_phase(name_, kind, identity);
  }

 private:
  std::string name_;
  fs::path state_dir_;
  dmm::Bucket bucket_;
  std::shared_ptr<dmm::controllers::files::FileObserver> files_;
  std::shared_ptr<dmm::controllers::processes::ProcessSupervisor> processes_;
  std::jthread file_thread_, process_thread_;  // declared after the bucket: stopped before it
  std::unique_ptr<dmm_test::Runner> runner_;
};

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

inline void write_file(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
}

// Permission bits of `path`, or -1 if it does not exist.
inline int mode_of(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<int>(st.st_mode & 07777) : -1;
}

}  // namespace ctl_test
