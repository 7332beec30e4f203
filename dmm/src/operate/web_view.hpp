// The web view served with /metrics: server-rendered HTML pages that refresh
// themselves (unless someone is typing), with actions behind a token. Every stored string is HTML-escaped (identities
// and errors are arbitrary UTF-8).
#pragma once

#include <cstdint>
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
  std::optional<std::string> prefix;  // identities starting with it (the search box)
  int page = 0;                       // 0-based; `limit` matters a page
  int limit = 200;
};

// The "?kind=..&phase=..&q=..&page=.." of `filter` with another page.
std::string list_query(const ListFilter& filter, int page);

// "/": the charts (render_charts' SVG), counts by kind and phase (links
// filter), the search, then one page of the matching matters (`total` in all).
std::string render_list_page(const std::string& bucket, const std::vector<KindStats>& stats,
                             const std::vector<MatterStatus>& matters, std::int64_t total, const ListFilter& filter,
                             const std::string& charts, int refresh_s);
// "/matter?kind=K&identity=I": state, history, the why sentence, a notice
// (an action's result; empty: none) and the action forms (retry, remove;
// with `actions_on` false they say how to turn actions on).
std::string render_matter_page(const std::string& bucket, const std::string& kind, const std::string& identity,
                               const std::optional<MatterDetail>& detail, bool actions_on, const std::string& notice,
                               int refresh_s);
// The page of a refused or failed action (403, 409): `message` and a link back.
std::string render_action_error(const std::string& bucket, const std::string& kind, const std::string& identity,
                                const std::string& message);

}  // namespace dmm::detail
