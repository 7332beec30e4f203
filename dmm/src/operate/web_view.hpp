// The read-only web view served with /metrics: server-rendered HTML pages
// that refresh themselves. Every stored string is HTML-escaped (identities
// and errors are arbitrary UTF-8).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dmm/inspect.hpp"

namespace dmm::detail {

std::string html_escape(std::string_view s);
// Percent-encodes everything but unreserved characters (for query strings).
std::string url_encode(std::string_view s);

struct ListFilter {
  std::optional<std::string> kind, phase;
  int limit = 200;
};

// "/": counts by kind and phase (links filter), then the matching matters.
std::string render_list_page(const std::string& bucket, const std::vector<KindStats>& stats,
                             const std::vector<MatterStatus>& matters, const ListFilter& filter, int refresh_s);
// "/matter?kind=K&identity=I": state, history and the why sentence.
std::string render_matter_page(const std::string& bucket, const std::string& kind, const std::string& identity,
                               const std::optional<MatterDetail>& detail, int refresh_s);

}  // namespace dmm::detail
