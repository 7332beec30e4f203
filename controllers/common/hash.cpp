#include <dmm/controllers/hash.hpp>

#include <cstdint>
#include <cstdio>
#include <fstream>

namespace dmm::controllers {

namespace {

constexpr std::uint64_t kOffset = 14695981039346656037ull;
constexpr std::uint64_t kPrime = 1099511628211ull;

std::uint64_t mix(std::uint64_t h, std::string_view bytes) {
  for (unsigned char c : bytes) h = (h ^ c) * kPrime;
  return h;
}

std::string hex(std::uint64_t h) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

}  // namespace

std::string content_hash(std::string_view bytes) { return hex(mix(kOffset, bytes)); }

std::optional<std::string> file_hash(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::uint64_t h = kOffset;
  char buf[64 * 1024];
  while (in.read(buf, sizeof buf) || in.gcount() > 0) h = mix(h, std::string_view(buf, static_cast<std::size_t>(in.gcount())));
  if (in.bad()) return std::nullopt;
  return hex(h);
}

}  // namespace dmm::controllers
