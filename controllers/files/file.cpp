// FileMatter: make the disk match the spec, atomically.
#include <dmm/controllers/files.hpp>

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <dmm/controllers/hash.hpp>

namespace dmm::controllers::files {

namespace fs = std::filesystem;

namespace {

std::string errno_text() { return std::strerror(errno); }

std::string octal(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

// The spec's mode bits; TerminalError if it is not 1-4 octal digits.
mode_t parse_mode(const FileSpec& spec) {
  const auto& m = spec.mode;
  if (m.empty() || m.size() > 4 || m.find_first_not_of("01234567") != std::string::npos)
    throw dmm::TerminalError("file '" + spec.path + "': mode '" + m + "' is not octal like \"0644\"");
  return static_cast<mode_t>(std::stoul(m, nullptr, 8));
}

bool all_digits(const std::string& s) { return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos; }

// "user[:group]" as uid:gid. An unknown name throws (retry: it may be created later).
std::pair<uid_t, gid_t> parse_owner(const FileSpec& spec) {
  const auto colon = spec.owner.find(':');
  const std::string user = spec.owner.substr(0, colon);
  const std::string group = colon == std::string::npos ? "" : spec.owner.substr(colon + 1);
  uid_t uid;
  gid_t gid;
  if (all_digits(user)) {
    uid = static_cast<uid_t>(std::stoul(user));
    gid = static_cast<gid_t>(-1);
  } else {
    const passwd* pw = ::getpwnam(user.c_str());
    if (!pw) throw std::runtime_error("file '" + spec.path + "': no user '" + user + "'");
    uid = pw->pw_uid;
    gid = pw->pw_gid;
  }
  if (all_digits(group)) {
    gid = static_cast<gid_t>(std::stoul(group));
  } else if (!group.empty()) {
    const struct group* gr = ::getgrnam(group.c_str());
    if (!gr) throw std::runtime_error("file '" + spec.path + "': no group '" + group + "'");
    gid = gr->gr_gid;
  }
  if (gid == static_cast<gid_t>(-1)) throw std::runtime_error("file '" + spec.path + "': give a group in owner");
  return {uid, gid};
}

std::string read_source(const FileSpec& spec) {
  std::ifstream in(spec.source, std::ios::binary);
  if (!in) throw std::runtime_error("file '" + spec.path + "': cannot read source '" + spec.source + "'");
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

void write_all(int fd, const std::string& bytes, const std::string& what) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw std::runtime_error("cannot write " + what + ": " + errno_text());
    done += static_cast<std::size_t>(n);
  }
}

// Writes `bytes` to a temporary file next to `path`, sets mode and owner,
// fsyncs it and renames it over `path`: readers see the old or the new file,
// never a partial one.
void write_atomically(const FileSpec& spec, const std::string& bytes, mode_t mode) {
  const fs::path path(spec.path);
  fs::create_directories(path.parent_path());
  const std::string tmp = (path.parent_path() / ("." + path.filename().string() + ".dmm-tmp-" +
                                                 std::to_string(std::random_device{}())))
                              .string();
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) throw std::runtime_error("cannot create '" + tmp + "': " + errno_text());
  try {
    write_all(fd, bytes, "'" + tmp + "'");
    if (::fchmod(fd, mode) != 0) throw std::runtime_error("cannot chmod '" + tmp + "': " + errno_text());
    if (!spec.owner.empty()) {
      auto [uid, gid] = parse_owner(spec);
      if (::fchown(fd, uid, gid) != 0) throw std::runtime_error("cannot chown '" + tmp + "': " + errno_text());
    }
    if (::fsync(fd) != 0) throw std::runtime_error("cannot fsync '" + tmp + "': " + errno_text());
    ::close(fd);
    if (::rename(tmp.c_str(), spec.path.c_str()) != 0)
      throw std::runtime_error("cannot rename '" + tmp + "' to '" + spec.path + "': " + errno_text());
  } catch (...) {
    ::close(fd);  // harmless EBADF if already closed
    ::unlink(tmp.c_str());
    throw;
  }
  // The rename is durable once the directory is synced.
  if (const int dir = ::open(path.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dir >= 0) {
    ::fsync(dir);
    ::close(dir);
  }
}

void check_spec(const FileSpec& spec) {
  if (spec.path.empty() || spec.path.front() != '/')
    throw dmm::TerminalError("file '" + spec.path + "': path must be absolute");
  if (!spec.source.empty() && spec.source.front() != '/')
    throw dmm::TerminalError("file '" + spec.path + "': source '" + spec.source + "' must be absolute");
  if (!spec.source.empty() && !spec.content.empty())
    throw dmm::TerminalError("file '" + spec.path + "': give content or source, not both");
  parse_mode(spec);
}

}  // namespace

FileStatus observe_file(const FileSpec& spec) {
  FileStatus s;
  if (!spec.source.empty()) s.source_hash = file_hash(spec.source).value_or("");
  struct stat st {};
  if (::lstat(spec.path.c_str(), &st) != 0) return s;  // missing (or unreadable): exists = false
  s.exists = true;
  s.mode = octal(st.st_mode);
  s.owner = std::to_string(st.st_uid) + ":" + std::to_string(st.st_gid);
  // Anything but a regular file (a directory, a symlink) never matches a hash.
  s.hash = S_ISREG(st.st_mode) ? file_hash(spec.path).value_or("") : "";
  return s;
}

dmm::Result FileMatter::materialize(dmm::Context& ctx) {
  check_spec(spec);
  ctx.service<FileObserver>().watch(spec);  // from now on drift is reported
  const std::string bytes = spec.source.empty() ? spec.content : read_source(spec);
  const mode_t mode = parse_mode(spec);

  FileStatus now = observe_file(spec);  // the disk, not the cached observation
  bool owner_ok = true;
  if (!spec.owner.empty()) {
    auto [uid, gid] = parse_owner(spec);
    owner_ok = now.owner == std::to_string(uid) + ":" + std::to_string(gid);
  }
  if (now.exists && now.hash == content_hash(bytes) && now.mode == octal(mode) && owner_ok) {
    observed = now;
    return dmm::Result::done();
  }
  write_atomically(spec, bytes, mode);
  ctx.service<FileObserver>().watch(spec);  // again: the directory may be new
  ctx.log().info("file '{}': {} (mode {})", spec.path, now.exists ? "rewritten to match its spec" : "created",
                 octal(mode));
  observed = observe_file(spec);
  return dmm::Result::done();
}

void FileMatter::finalize(dmm::Context& ctx) {
  ctx.service<FileObserver>().forget(spec.path);
  if (::unlink(spec.path.c_str()) != 0 && errno != ENOENT)
    throw std::runtime_error("file '" + spec.path + "': cannot delete: " + errno_text());
  ctx.log().info("file '{}': deleted", spec.path);
}

}  // namespace dmm::controllers::files
