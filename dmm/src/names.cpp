#include "names.hpp"

#include <charconv>
#include <fmt/format.h>

#include "dmm/errors.hpp"

namespace dmm::detail {
namespace {

bool valid_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    int extra;
    std::uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      extra = 1, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      extra = 2, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      extra = 3, cp = c & 0x07;
    } else {
      return false;
    }
    if (i + extra >= s.size()) return false;
    for (int k = 1; k <= extra; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    // Overlong forms, surrogates and values past U+10FFFF are not UTF-8.
    static constexpr std::uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[extra] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += extra + 1;
  }
  return true;
}

std::string shown(std::string_view s) {
  if (s.size() <= 40) return std::string(s);
  return fmt::format("{}... ({} bytes)", s.substr(0, 40), s.size());
}

}  // namespace

void validate_name(std::string_view what, std::string_view name) {
  bool ok = !name.empty() && name.size() <= 64;
  for (char c : name) {
    const bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    ok = ok && (alnum || c == '_' || c == '-');
  }
  if (!ok)
    throw InvalidArgument(fmt::format(
        "invalid {} name '{}': use 1-64 characters from [A-Za-z0-9_-] (it becomes part of NATS subjects and "
        "stream/consumer names)",
        what, shown(name)));
}

void validate_identity(std::string_view kind, std::string_view identity) {
  if (identity.empty())
    throw InvalidArgument(fmt::format("kind '{}': identity is empty; identity() must return 1-{} bytes of UTF-8",
                                      kind, kMaxIdentityBytes));
  if (identity.size() > kMaxIdentityBytes)
    throw InvalidArgument(fmt::format(
        "kind '{}': identity '{}' is too long; the limit is {} bytes (use a shorter key, e.g. a hash of it)", kind,
        shown(identity), kMaxIdentityBytes));
  if (identity.find('\0') != std::string_view::npos || !valid_utf8(identity))
    throw InvalidArgument(fmt::format(
        "kind '{}': identity of {} bytes is not valid UTF-8 or contains NUL; identities must be UTF-8 text", kind,
        identity.size()));
}

std::string stream_name(std::string_view bucket) { return fmt::format("DMM_{}", bucket); }
std::string bucket_subjects(std::string_view bucket) { return fmt::format("dmm.{}.>", bucket); }
std::string kind_subjects(std::string_view bucket, std::string_view kind) {
  return fmt::format("dmm.{}.{}.>", bucket, kind);
}
std::string token_subject(std::string_view bucket, std::string_view kind, std::int64_t row_id) {
  return fmt::format("dmm.{}.{}.{}", bucket, kind, row_id);
}

std::optional<std::int64_t> parse_token_subject(std::string_view subject, std::string_view bucket,
                                                std::string_view kind) {
  const std::string prefix = fmt::format("dmm.{}.{}.", bucket, kind);
  if (subject.size() <= prefix.size() || subject.substr(0, prefix.size()) != prefix) return std::nullopt;
  const auto rest = subject.substr(prefix.size());
  std::int64_t id = 0;
  auto [end, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), id);
  if (ec != std::errc() || end != rest.data() + rest.size() || id <= 0) return std::nullopt;
  return id;
}

}  // namespace dmm::detail
