// The file controller: desired files (path, content or source, mode, owner)
// written onto disk atomically, and an observer that reports their absolute
// state so that drift (an edit, a chmod, a deletion) is repaired at once.
//
// Copy this as a template. Its two halves are the pattern of every dmm
// controller:
// - FileMatter::materialize makes the disk match `spec` (it looks at the disk
//   itself, never trusting a cached observation) and records what it left
//   there in `observed`;
// - FileObserver watches the disk (inotify on the parent directories, plus a
//   full resync every 30 s because no event is trusted) and records the
//   absolute state with Bucket::update. A state that differs from the stored
//   one is a change: the file is materialized again, and rewritten if it
//   does not match its spec.
// finalize (after Bucket::remove) deletes the file.
#pragma once

#include <chrono>
#include <dmm/dmm.hpp>
#include <map>
#include <mutex>
#include <set>
#include <stop_token>
#include <string>

namespace dmm::controllers::files {

// The kind name hostd registers FileMatter under (ProcessSpec::depends_on uses it).
inline constexpr const char* kKind = "file";

// What should be on disk.
struct FileSpec {
  std::string path{};     // absolute; the identity
  std::string content{};  // the bytes to write (UTF-8 text), unless `source` is set
  std::string source{};   // absolute path of a file whose bytes to copy instead
  std::string mode = "0644";  // octal permission bits
  std::string owner{};    // "user", "user:group" (names or numbers); empty: leave as created
  std::string site{};     // who declared it (hostd's site name, for pruning); free text
  friend bool operator==(const FileSpec&, const FileSpec&) = default;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(FileSpec, path, content, source, mode, owner, site)

// What is on disk, as last seen by the observer or the materializer.
struct FileStatus {
  bool exists = false;
  std::string hash{};         // dmm::controllers::content_hash of the content
  std::string mode{};         // "0644"
  std::string owner{};        // "uid:gid"
  std::string source_hash{};  // hash of spec.source, when there is one
  friend bool operator==(const FileStatus&, const FileStatus&) = default;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(FileStatus, exists, hash, mode, owner, source_hash)

struct FileMatter {
  FileSpec spec{};
  FileStatus observed{};

  std::string identity() const { return spec.path; }
  // Writes the file (temp file + fsync + rename) unless the disk already
  // matches; throws (retry with backoff) if it cannot; TerminalError for a
  // spec that can never work (relative path, bad mode).
  dmm::Result materialize(dmm::Context& ctx);
  // Deletes the file (a missing file is fine).
  void finalize(dmm::Context& ctx);
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(FileMatter, spec, observed)

// The absolute state of `spec`'s file (and source) on disk now.
FileStatus observe_file(const FileSpec& spec);

// Watches the managed files and records their state with Bucket::update.
// Give it to the bucket (bucket.provide) so materialize/finalize can tell it
// what to watch, and run observe() on a thread of its own declared after the
// bucket (it uses the bucket until it returns).
class FileObserver {
 public:
  struct Options {
    std::string postgres;  // to list the stored files at start and at each resync
    std::chrono::milliseconds resync{30'000};
  };
  FileObserver(dmm::Bucket& bucket, Options options);
  ~FileObserver();
  FileObserver(const FileObserver&) = delete;
  FileObserver& operator=(const FileObserver&) = delete;

  // Reports changes until `stop` is requested. Call once.
  void observe(std::stop_token stop);

  // Called by materialize: watch this file (and its source) from now on.
  void watch(const FileSpec& spec);
  // Called by finalize before it deletes the file: stop reporting it, so that
  // the deletion is not recorded as drift (which would cancel the removal).
  void forget(const std::string& path);

 private:
  void watch_locked(const FileSpec& spec);
  void add_dir_watch(const std::string& dir);
  void handle_events();
  void refresh_dir(const std::string& dir);
  void refresh(const std::string& path);
  void resync();

  dmm::Bucket& bucket_;
  const Options options_;
  const int inotify_fd_;  // constant after construction
  // All below protected by mu_, which is also held across each Bucket::update
  // of refresh(): forget() returning means no report of that path is running.
  std::mutex mu_;
  std::map<std::string, FileSpec> files_;                 // by path
  std::map<std::string, std::set<std::string>> by_dir_;  // dir -> paths whose file or source is in it
  std::map<int, std::string> dirs_by_wd_;
  std::map<std::string, int> wd_by_dir_;
};

}  // namespace dmm::controllers::files
