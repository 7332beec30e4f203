// dmm::dev_env_setting (dmm/dev_env.hpp): how dmmctl, the example, the
// controllers and dmm_bench find their settings. No servers needed.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <dmm/dev_env.hpp>
#include <filesystem>
#include <fstream>

#include "harness.hpp"

using namespace dmm_test;
namespace fs = std::filesystem;

namespace {

// A scratch directory tree the test works in (as the current directory),
// and an environment variable of its own; both undone on destruction.
struct Scratch {
  fs::path previous = fs::current_path();
  fs::path root = fs::temp_directory_path() / unique_name("dev_env");
  std::string key = "DMM_TEST_SETTING_" + unique_name("k");
  Scratch() {
    fs::create_directories(root / "a" / "b");
    fs::current_path(root / "a" / "b");
  }
  ~Scratch() {
    ::unsetenv(key.c_str());
    std::error_code ec;
    fs::current_path(previous, ec);
    fs::remove_all(root, ec);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  void write_env(const fs::path& dir, const std::string& text) {
    fs::create_directories(dir / ".dmm");
    std::ofstream(dir / ".dmm" / "env") << text;
  }
};

}  // namespace

TEST_CASE("a setting is the flag, else the environment variable, else the nearest .dmm/env that has it",
          "[dev-env]") {
  Scratch s;
  const char* key = s.key.c_str();
  CHECK(dmm::dev_env_setting("", key) == "");

  s.write_env(s.root, "export OTHER=x\nexport " + s.key + "=first\nexport " + s.key + "=from-root\n");
  CHECK(dmm::dev_env_setting("", key) == "from-root");  // a parent's, the last line, as sourcing it would
  s.write_env(s.root / "a", "export OTHER=y\n");
  CHECK(dmm::dev_env_setting("", key) == "from-root");  // a nearer file without the key is passed over
  s.write_env(s.root / "a", "export " + s.key + "=from-a\n");
  CHECK(dmm::dev_env_setting("", key) == "from-a");

  ::setenv(key, "", 1);
  CHECK(dmm::dev_env_setting("", key) == "from-a");  // an empty variable counts as unset
  ::setenv(key, "from-environment", 1);
  CHECK(dmm::dev_env_setting("", key) == "from-environment");
  CHECK(dmm::dev_env_setting("from-flag", key) == "from-flag");
}

TEST_CASE("a required setting that is nowhere names the flag, the variable and scripts/dev-env up", "[dev-env]") {
  Scratch s;
  const char* key = s.key.c_str();
  try {
    dmm::required_dev_env_setting("", key, "postgres", "postgres URL");
    FAIL("no error");
  } catch (const dmm::InvalidArgument& e) {
    CHECK(std::string(e.what()) == "no postgres URL: pass --postgres, set " + s.key +
                                       ", or start local servers with scripts/dev-env up");
  }
  s.write_env(s.root, "export " + s.key + "=postgresql://u@h/db\n");
  CHECK(dmm::required_dev_env_setting("", key, "postgres", "postgres URL") == "postgresql://u@h/db");
}
