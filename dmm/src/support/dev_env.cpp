// dev_env_setting and required_dev_env_setting (see dmm/dev_env.hpp).
#include "dmm/dev_env.hpp"

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "dmm/errors.hpp"

namespace dmm {
namespace {

// The last `export KEY=value` of `file`, as sourcing it would leave KEY.
std::string exported_value(const std::filesystem::path& file, const std::string& key) {
  std::ifstream in(file);
  const std::string prefix = "export " + key + "=";
  std::string value;
  for (std::string line; std::getline(in, line);)
    if (line.rfind(prefix, 0) == 0) value = line.substr(prefix.size());
  return value;
}

std::string from_dev_env(const std::string& key) {
  std::error_code ec;
  for (auto dir = std::filesystem::current_path(ec); !ec && !dir.empty(); dir = dir.parent_path()) {
    if (auto value = exported_value(dir / ".dmm" / "env", key); !value.empty()) return value;
    if (dir == dir.root_path()) break;
  }
  return "";
}

}  // namespace

std::string dev_env_setting(const std::string& flag, const char* env) {
  if (!flag.empty()) return flag;
  if (const char* v = std::getenv(env); v && *v) return v;
  return from_dev_env(env);
}

std::string required_dev_env_setting(const std::string& flag, const char* env, const char* option,
                                     const char* what) {
  auto value = dev_env_setting(flag, env);
  if (value.empty())
    throw InvalidArgument(std::string("no ") + what + ": pass --" + option + ", set " + env +
                          ", or start local servers with scripts/dev-env up");
  return value;
}

}  // namespace dmm
