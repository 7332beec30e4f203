#include "protocol/names.hpp"

#include <algorithm>
#include <charconv>
#include <fmt/format.h>

#include "dmm/errors.hpp"
#include "protocol/vocabulary.hpp"

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

void validate_fair_key(std::string_view kind, std::string_view identity, std::string_view key) {
  const auto bad = [&](const std::string& what) {
    throw InvalidArgument(fmt::format("kind '{}' identity '{}': fairness key {}; KindOptions::fairness_key (or the "
                                      "type's tenant()) must give 1-{} bytes of UTF-8 text",
                                      kind, shown(identity), what, kMaxFairKeyBytes));
  };
  if (key.empty()) bad("is empty");
  if (key.size() > kMaxFairKeyBytes) bad(fmt::format("'{}...' is {} bytes", shown(key.substr(0, 32)), key.size()));
  if (key.find('\0') != std::string_view::npos || !valid_utf8(key)) bad("is not valid UTF-8 or contains NUL");
}

void check_state_size(const nlohmann::json& state, std::size_t limit, StateSource source, std::string_view kind,
                      std::string_view identity) {
  std::size_t size = 0;
  try {
    size = state.dump().size();
  } catch (const nlohmann::json::exception& e) {
    if (source == StateSource::materialize) throw;  // an ordinary error: retried
    throw InvalidArgument(fmt::format("kind '{}' identity '{}': state cannot be stored as JSON ({}); strings in a "
                                      "state must be valid UTF-8",
                                      kind, identity.substr(0, 64), e.what()));
  }
  if (size <= limit) return;
  if (source == StateSource::materialize)
    throw TerminalError(fmt::format("materialize left a state of {} bytes, over max_state_bytes ({})", size, limit));
  throw InvalidArgument(fmt::format("kind '{}' identity '{}': state is {} bytes, over the bucket's limit of {} "
                                    "(BucketOptions::max_state_bytes); keep large data elsewhere and store a "
                                    "reference",
                                    kind, identity.substr(0, 64), size, limit));
}

std::string stream_name(std::string_view bucket) { return fmt::format("DMM_{}", bucket); }
std::string bucket_subjects(std::string_view bucket) { return fmt::format("dmm.{}.>", bucket); }
std::string class_name(std::string_view kind, Priority priority) {
  return fmt::format("{}{}", kind, kPriorities.at(index_of(priority)).suffix);
}
std::string_view kind_of_class_name(std::string_view class_name) {
  return class_name.substr(0, class_name.find('~'));
}
std::string kind_subjects(std::string_view bucket, std::string_view kind, Priority priority) {
  return fmt::format("dmm.{}.{}.>", bucket, class_name(kind, priority));
}
std::string token_subject(std::string_view bucket, std::string_view kind, std::int64_t row_id, Priority priority) {
  return fmt::format("dmm.{}.{}.{}", bucket, class_name(kind, priority), row_id);
}

namespace {

// A positive row id filling all of `text`.
std::optional<std::int64_t> parse_row_id(std::string_view text) {
  std::int64_t id = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), id);
  if (ec != std::errc() || end != text.data() + text.size() || id <= 0) return std::nullopt;
  return id;
}

// What follows "dmm.<bucket>.<class name>." in `subject`; nullopt if it is
// not that.
std::optional<std::string_view> after_kind_prefix(std::string_view subject, std::string_view bucket,
                                                  std::string_view kind, Priority priority) {
  const std::string prefix = fmt::format("dmm.{}.{}.", bucket, class_name(kind, priority));
  if (subject.size() <= prefix.size() || subject.substr(0, prefix.size()) != prefix) return std::nullopt;
  return subject.substr(prefix.size());
}

}  // namespace

std::vector<TokenMessage> token_messages(std::string_view bucket, std::string_view kind,
                                         std::vector<std::int64_t> ids, Priority priority) {
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  std::vector<TokenMessage> out;
  if (ids.size() == 1) out.push_back({token_subject(bucket, kind, ids[0], priority), {}});
  if (ids.size() <= 1) return out;
  // As few tokens as the limit allows, their sizes differing by at most one
  // (each gets at least 33 ids once there are two or more).
  const auto tokens = (ids.size() + kMaxIdsPerToken - 1) / kMaxIdsPerToken;
  for (std::size_t t = 0, begin = 0; t < tokens; ++t) {
    const auto end = begin + ids.size() / tokens + (t < ids.size() % tokens ? 1 : 0);
    TokenMessage m{fmt::format("dmm.{}.{}.{}.{}", bucket, class_name(kind, priority), ids[begin], ids[end - 1]), {}};
    m.payload.reserve((end - begin) * 8);
    for (auto i = begin; i < end; ++i)
      fmt::format_to(std::back_inserter(m.payload), "{}{}", i == begin ? "" : ",", ids[i]);
    out.push_back(std::move(m));
    begin = end;
  }
  return out;
}

std::optional<std::vector<std::int64_t>> parse_token(std::string_view subject, std::string_view payload,
                                                     std::string_view bucket, std::string_view kind,
                                                     Priority priority) {
  const auto rest = after_kind_prefix(subject, bucket, kind, priority);
  if (!rest) return std::nullopt;
  const auto dot = rest->find('.');
  if (dot == std::string_view::npos) {
    auto id = parse_row_id(*rest);
    if (!id) return std::nullopt;
    return std::vector<std::int64_t>{*id};
  }
  const auto first = parse_row_id(rest->substr(0, dot));
  const auto last = parse_row_id(rest->substr(dot + 1));
  if (!first || !last || *first >= *last) return std::nullopt;
  std::vector<std::int64_t> ids;
  for (std::size_t begin = 0; begin <= payload.size();) {
    const auto end = std::min(payload.find(',', begin), payload.size());
    const auto id = parse_row_id(payload.substr(begin, end - begin));
    if (!id || (!ids.empty() && *id <= ids.back()) || ids.size() == kMaxIdsPerTokenParsed) return std::nullopt;
    ids.push_back(*id);
    begin = end + 1;
  }
  if (ids.size() < 2 || ids.front() != *first || ids.back() != *last) return std::nullopt;
  return ids;
}

}  // namespace dmm::detail
