#include "common/connection.hpp"

#include <cstdlib>
#include <dmm/errors.hpp>
#include <filesystem>
#include <fstream>

namespace controllers {

namespace {

// KEY from the `export KEY=value` lines of the nearest .dmm/env.
std::string from_dev_env(const std::string& key) {
  std::error_code ec;
  for (auto dir = std::filesystem::current_path(ec); !ec && !dir.empty(); dir = dir.parent_path()) {
    std::ifstream in(dir / ".dmm" / "env");
    const std::string prefix = "export " + key + "=";
    for (std::string line; std::getline(in, line);)
      if (line.rfind(prefix, 0) == 0) return line.substr(prefix.size());
    if (dir == dir.root_path()) break;
  }
  return "";
}

}  // namespace

std::string resolve_url(const std::string& flag, const char* env, const char* what) {
  if (!flag.empty()) return flag;
  if (const char* v = std::getenv(env); v && *v) return v;
  if (auto v = from_dev_env(env); !v.empty()) return v;
  throw dmm::InvalidArgument(std::string("no ") + what + " URL: pass --" + what + ", set " + env +
                             ", or start local servers with scripts/dev-env up");
}

}  // namespace controllers
