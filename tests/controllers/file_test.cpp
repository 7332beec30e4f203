// The file controller on real files: created atomically with its mode, drift
// repaired within a second or two, sources followed, finalize deletes.
#include <catch2/catch.hpp>

#include "host.hpp"

using namespace ctl_test;
using dmm::controllers::files::FileSpec;
using dmm_test::wait_until;

namespace {

constexpr auto kDrift = 2000ms;  // "repaired within a second", with room for a loaded machine

FileMatter file(const std::string& path, const std::string& content, const std::string& mode = "0644") {
  return FileMatter{.spec = FileSpec{.path = path, .content = content, .mode = mode}};
}

}  // namespace

TEST_CASE("a file is created with its content and mode, parent directories included", "[files]") {
  TempDir dir;
  Host host(dmm_test::unique_name("files"), dir.path() / "state");
  const auto path = dir / "www/a/index.html";
  host.bucket().notify(file(path, "<h1>hello</h1>\n", "0640"));
  wait_until([&] { return read_file(path) == "<h1>hello</h1>\n" && mode_of(path) == 0640; }, 5000ms,
             "the file to be written with mode 0640");
  wait_until([&] { return host.phase("file", path) == "ready"; }, 5000ms, "the file matter to be ready");
  auto stored = host.bucket().get<FileMatter>(path);
  REQUIRE(stored);
  CHECK(stored->observed.exists);
  CHECK(stored->observed.mode == "0640");
  // Atomic write: no temp file is left behind.
  for (const auto& entry : fs::directory_iterator(dir.path() / "www/a")) CHECK(entry.path().filename() == "index.html");
}

TEST_CASE("drift is repaired within two seconds: an edit, a chmod, a deletion, a removed directory", "[files]") {
  TempDir dir;
  Host host(dmm_test::unique_name("files"), dir.path() / "state");
  const auto path = dir / "site/index.html";
  host.bucket().notify(file(path, "desired\n", "0644"));
  wait_until([&] { return read_file(path) == "desired\n" && host.phase("file", path) == "ready"; }, 5000ms,
             "the file to be written");

  write_file(path, "tampered by hand\n");
  wait_until([&] { return read_file(path) == "desired\n"; }, kDrift, "an edited file to be rewritten");

  fs::permissions(path, fs::perms::all);
  wait_until([&] { return mode_of(path) == 0644; }, kDrift, "a chmod to be undone");

  fs::remove(path);
  wait_until([&] { return read_file(path) == "desired\n"; }, kDrift, "a deleted file to come back");

  fs::remove_all(dir.path() / "site");
  wait_until([&] { return read_file(path) == "desired\n"; }, kDrift, "a file in a deleted directory to come back");
  // The recreated directory is watched again.
  write_file(path, "tampered again\n");
  wait_until([&] { return read_file(path) == "desired\n"; }, kDrift, "drift in the recreated directory to be repaired");
}

TEST_CASE("a file with a source follows its source", "[files]") {
  TempDir dir;
  Host host(dmm_test::unique_name("files"), dir.path() / "state");
  const auto source = dir / "src/page.html", path = dir / "www/page.html";
  fs::create_directories(dir.path() / "src");
  write_file(source, "version 1\n");
  host.bucket().notify(FileMatter{.spec = FileSpec{.path = path, .source = source}});
  wait_until([&] { return read_file(path) == "version 1\n"; }, 5000ms, "the copy of the source");
  write_file(source, "version 2\n");
  wait_until([&] { return read_file(path) == "version 2\n"; }, kDrift, "the copy to follow its source");
}

TEST_CASE("a changed spec is materialized, and finalize removes the file for good", "[files]") {
  TempDir dir;
  Host host(dmm_test::unique_name("files"), dir.path() / "state");
  const auto path = dir / "conf/app.conf";
  host.bucket().notify(file(path, "a=1\n"));
  wait_until([&] { return read_file(path) == "a=1\n"; }, 5000ms, "the file");
  host.bucket().update<FileMatter>(path, [](FileMatter& f) { f.spec.content = "a=2\n"; });
  wait_until([&] { return read_file(path) == "a=2\n"; }, 5000ms, "the new content");

  REQUIRE(host.bucket().remove<FileMatter>(path));
  wait_until([&] { return !fs::exists(path) && host.phase("file", path) == "(absent)"; }, 5000ms,
             "the file and its matter to be gone");
  // The deletion by finalize is not drift: nothing brings the file back.
  dmm_test::holds_for([&] { return !fs::exists(path); }, 1000ms, "the removed file to stay removed");
}
