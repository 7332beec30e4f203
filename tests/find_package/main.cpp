// Builds against the installed dmm package: a materializer type and one call
// into the library, and the file controller of dmm::controllers observing a
// file on disk (the same check the controller's materialize makes).
#include <unistd.h>

#include <dmm/controllers/files.hpp>
#include <dmm/controllers/hash.hpp>
#include <dmm/controllers/processes.hpp>
#include <dmm/dmm.hpp>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>

namespace {

struct Lamp {
  std::string room;
  bool on = false;
  std::string identity() const { return room; }
  dmm::Result materialize(dmm::Context& ctx) {
    ctx.log().info("lamp {} on={}", room, on);
    return dmm::Result::done();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Lamp, room, on)

static_assert(dmm::Materializer<Lamp>);
static_assert(dmm::Materializer<dmm::controllers::files::FileMatter>);
static_assert(dmm::Materializer<dmm::controllers::processes::ProcessMatter>);

int fail(const std::string& what) {
  std::cerr << what << "\n";
  return 1;
}

}  // namespace

int main() {
  const std::string masked = dmm::mask_url("postgresql://app:secret@db:5432/app");
  std::cout << masked << "\n";
  if (masked != "postgresql://app:****@db:5432/app") return fail("unexpected mask_url result: " + masked);

  namespace files = dmm::controllers::files;
  const auto path = std::filesystem::temp_directory_path() / ("dmm_consumer_" + std::to_string(::getpid()) + ".txt");
  const std::string content = "hello from a dmm consumer\n";
  std::ofstream(path) << content;
  const files::FileStatus seen = files::observe_file({.path = path.string(), .content = content});
  std::filesystem::remove(path);
  std::cout << "observe_file: exists=" << seen.exists << " hash=" << seen.hash << " mode=" << seen.mode << "\n";
  if (!seen.exists || seen.hash != dmm::controllers::content_hash(content))
    return fail("unexpected observe_file result for " + path.string());
  return 0;
}
