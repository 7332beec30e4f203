// FileObserver: inotify on the parent directories of managed files, and a full
// resync as a safety net. Every report is the absolute state of a file.
#include <poll.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <spdlog/spdlog.h>

#include <dmm/controllers/files.hpp>

namespace dmm::controllers::files {

namespace {

constexpr std::uint32_t kDirEvents = IN_CREATE | IN_DELETE | IN_MODIFY | IN_CLOSE_WRITE | IN_ATTRIB | IN_MOVED_FROM |
                                     IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR;

std::string parent_of(const std::string& path) { return std::filesystem::path(path).parent_path().string(); }

}  // namespace

FileObserver::FileObserver(dmm::Bucket& bucket, Options options)
    : bucket_(bucket), options_(std::move(options)), inotify_fd_(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC)) {
  if (inotify_fd_ < 0) throw std::runtime_error(std::string("file observer: inotify_init1: ") + std::strerror(errno));
}

FileObserver::~FileObserver() { ::close(inotify_fd_); }

void FileObserver::observe(std::stop_token stop) {
  auto next_resync = std::chrono::steady_clock::now();
  while (!stop.stop_requested()) {
    if (std::chrono::steady_clock::now() >= next_resync) {
      try {
        resync();
      } catch (const std::exception& e) {
        spdlog::warn("file observer: resync failed (next in {} ms): {}", options_.resync.count(), e.what());
      }
      next_resync = std::chrono::steady_clock::now() + options_.resync;
    }
    pollfd pfd{.fd = inotify_fd_, .events = POLLIN, .revents = 0};
    if (::poll(&pfd, 1, 200) > 0) {
      try {
        handle_events();
      } catch (const std::exception& e) {
        spdlog::warn("file observer: cannot report a change (the next resync will): {}", e.what());
      }
    }
  }
}

void FileObserver::watch(const FileSpec& spec) {
  std::lock_guard lock(mu_);
  watch_locked(spec);
}

void FileObserver::watch_locked(const FileSpec& spec) {
  files_[spec.path] = spec;
  for (const auto& p : {spec.path, spec.source}) {
    if (p.empty()) continue;
    const auto dir = parent_of(p);
    by_dir_[dir].insert(spec.path);
    add_dir_watch(dir);
  }
}

// Watches `dir` if it is not yet watched. A missing directory is not an
// error: materialize creates it and calls watch() again.
void FileObserver::add_dir_watch(const std::string& dir) {
  if (wd_by_dir_.contains(dir)) return;
  const int wd = ::inotify_add_watch(inotify_fd_, dir.c_str(), kDirEvents);
  if (wd < 0) return;
  wd_by_dir_[dir] = wd;
  dirs_by_wd_[wd] = dir;
}

void FileObserver::forget(const std::string& path) {
  std::lock_guard lock(mu_);
  files_.erase(path);
  for (auto& [dir, paths] : by_dir_) paths.erase(path);
}

// Reads every pending event, then reports each affected directory once: an
// editor's save is a burst of events but one state.
void FileObserver::handle_events() {
  std::set<std::string> dirs;
  bool overflow = false;
  alignas(inotify_event) char buf[16 * 1024];
  for (;;) {
    const ssize_t n = ::read(inotify_fd_, buf, sizeof buf);
    if (n <= 0) break;
    std::lock_guard lock(mu_);
    for (char* p = buf; p < buf + n;) {
      const auto* ev = reinterpret_cast<const inotify_event*>(p);
      p += sizeof(inotify_event) + ev->len;
      if (ev->mask & IN_Q_OVERFLOW) overflow = true;
      auto it = dirs_by_wd_.find(ev->wd);
      if (it == dirs_by_wd_.end()) continue;
      // Our own temp files (materialize's atomic writes) are not drift; the
      // rename that ends a write is an event of the file itself.
      const bool own_temp = ev->len && std::strstr(ev->name, ".dmm-tmp-") && !(ev->mask & IN_MOVED_FROM);
      if (!own_temp) dirs.insert(it->second);
      if (ev->mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF)) {
        // The directory itself went away: its files are gone; materialize
        // recreates it and watches it again.
        ::inotify_rm_watch(inotify_fd_, ev->wd);
        wd_by_dir_.erase(it->second);
        dirs_by_wd_.erase(it);
      }
    }
  }
  if (overflow) {
    resync();
    return;
  }
  for (const auto& dir : dirs) refresh_dir(dir);
}

void FileObserver::refresh_dir(const std::string& dir) {
  std::set<std::string> paths;
  {
    std::lock_guard lock(mu_);
    if (auto it = by_dir_.find(dir); it != by_dir_.end()) paths = it->second;
  }
  for (const auto& path : paths) refresh(path);
}

// Records the absolute state of one file. Holds mu_ across the update so that
// forget() waits for a report in progress.
void FileObserver::refresh(const std::string& path) {
  std::lock_guard lock(mu_);
  auto it = files_.find(path);
  if (it == files_.end()) return;  // forgotten: being deleted
  const FileStatus now = observe_file(it->second);
  const bool exists = bucket_.update<FileMatter>(path, [&](FileMatter& f) { f.observed = now; });
  if (!exists) files_.erase(path);
}

// Lists every stored file, watches it and reports its state: catches what
// events missed (a lost event, a directory created later, a restart). Files
// whose matter is gone are dropped by refresh().
void FileObserver::resync() {
  const auto stored =
      dmm::inspect({.postgres = options_.postgres, .bucket = bucket_.name(), .kind = bucket_.kind<FileMatter>(),
                    .limit = 1'000'000});
  std::vector<std::string> paths;
  {
    std::lock_guard lock(mu_);
    for (const auto& m : stored) {
      if (m.removing) continue;  // finalize deletes it; its deletion is no drift
      watch_locked(nlohmann::json::parse(m.state).get<FileMatter>().spec);
    }
    for (const auto& [path, spec] : files_) paths.push_back(path);
  }
  for (const auto& path : paths) refresh(path);
}

}  // namespace dmm::controllers::files
