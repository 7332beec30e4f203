#include "dmm/url.hpp"

#include <string>

namespace dmm {
namespace {

// scheme://user:password@host -> scheme://user:****@host, for each
// comma-separated URL.
std::string mask_one(std::string url) {
  const auto scheme = url.find("://");
  if (scheme == std::string::npos) return url;
  const auto start = scheme + 3;
  auto at = url.find('@', start);
  const auto slash = url.find('/', start);
  if (at == std::string::npos || (slash != std::string::npos && slash < at)) return url;
  // The last '@' before the path: passwords may contain '@' when not encoded.
  for (auto next = url.find('@', at + 1); next != std::string::npos && (slash == std::string::npos || next < slash);
       next = url.find('@', next + 1))
    at = next;
  const auto colon = url.find(':', start);
  if (colon == std::string::npos || colon > at) return url;
  return url.substr(0, colon + 1) + "****" + url.substr(at);
}

// key=value connection strings: password=secret -> password=****.
std::string mask_keyword(std::string s) {
  const std::string key = "password=";
  for (auto pos = s.find(key); pos != std::string::npos; pos = s.find(key, pos + 1)) {
    if (pos > 0 && s[pos - 1] != ' ' && s[pos - 1] != '?' && s[pos - 1] != '&') continue;
    const auto begin = pos + key.size();
    auto end = begin;
    if (end < s.size() && s[end] == '\'') {
      for (++end; end < s.size() && s[end] != '\''; ++end)
        if (s[end] == '\\') ++end;
      end = std::min(end + 1, s.size());
    } else {
      while (end < s.size() && s[end] != ' ' && s[end] != '&') ++end;
    }
    s.replace(begin, end - begin, "****");
  }
  return s;
}

}  // namespace

std::string mask_url(std::string_view url) {
  std::string out;
  std::size_t pos = 0;
  while (true) {
    const auto comma = url.find(',', pos);
    out += mask_one(std::string(url.substr(pos, comma == std::string_view::npos ? std::string_view::npos : comma - pos)));
    if (comma == std::string_view::npos) break;
    out += ',';
    pos = comma + 1;
  }
  return mask_keyword(out);
}

}  // namespace dmm
