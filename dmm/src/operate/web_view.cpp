// HTML of the web view (see web_view.hpp).
#include "operate/web_view.hpp"
#include "operate/steps_view.hpp"

#include "protocol/vocabulary.hpp"

#include <cctype>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace dmm::detail {
namespace {


// The page reloads itself every refresh_s, unless a field has the focus or
// holds typed text (a search, a token): reloading would throw it away.
std::string page(const std::string& title, int refresh_s, const std::string& body) {
  return fmt::format(R"(<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<script id="auto-refresh">
setInterval(function () {{
  var a = document.activeElement;
  if (a && (a.tagName === "INPUT" || a.tagName === "SELECT")) return;
  var typed = Array.prototype.some.call(document.querySelectorAll("input[type=password], input[type=search]"),
                                        function (i) {{ return i.value !== i.defaultValue; }});
  if (!typed) location.reload();
}}, {} * 1000);
</script>
<title>{}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin: .5em 0 1.5em; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 3px 10px 3px 0; text-align: left; vertical-align: top; }}
th {{ font-weight: 600; }}
.phase-ready {{ color: #176f2c; }} .phase-failed {{ color: #b00020; font-weight: 600; }}
.phase-retrying {{ color: #b35c00; }} .phase-reconciling {{ color: #0050a0; }}
.phase-pending, .phase-deleting {{ color: #666; }}
.why {{ font-size: 1.15em; padding: .6em; background: #f4f4f4; border-left: 4px solid #888; }}
pre {{ background: #f8f8f8; padding: .6em; overflow: auto; max-height: 30em; }}
.muted {{ color: #777; }} a {{ color: #0050a0; }}
.notice {{ padding: .6em; background: #e7f4ea; border-left: 4px solid #176f2c; }}
.refused {{ padding: .6em; background: #fbe9eb; border-left: 4px solid #b00020; }}
.charts svg {{ display: block; margin: .3em 0; }}
form.action {{ display: inline-block; margin-right: 1.5em; }}
</style></head><body>
{}
<p class="muted">refreshes every {}s</p>
</body></html>
)",
                     refresh_s, html_escape(title), body, refresh_s);
}

std::string phase_cell(const std::string& phase) {
  return fmt::format(R"(<span class="phase-{}">{}</span>)", html_escape(phase), html_escape(phase));
}

std::string or_dash(const std::string& s) { return s.empty() ? "-" : html_escape(s); }

std::string matter_link(const std::string& kind, const std::string& identity) {
  return fmt::format(R"(<a href="/matter?kind={}&amp;identity={}">{}</a>)", url_encode(kind), url_encode(identity),
                     html_escape(identity));
}

std::string list_link(const std::optional<std::string>& kind, const std::optional<std::string>& phase,
                      const std::string& text) {
  ListFilter filter;
  filter.kind = kind;
  filter.phase = phase;
  return fmt::format(R"(<a href="/{}">{}</a>)", list_query(filter, 0), html_escape(text));
}

// A form that POSTs `action` for one matter, with the token field.
std::string action_form(const std::string& action, const std::string& kind, const std::string& identity,
                        const std::string& label) {
  return fmt::format(R"(<form class="action" id="{0}-form" method="post" action="/matter/{0}">)"
                     R"(<input type="hidden" name="kind" value="{1}"><input type="hidden" name="identity" value="{2}">)"
                     R"(<input type="password" name="token" placeholder="action token" autocomplete="off" required> )"
                     R"(<button type="submit" id="{0}-button">{3}</button></form>)",
                     action, html_escape(kind), html_escape(identity), label);
}

}  // namespace

std::string html_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string url_encode(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') out += static_cast<char>(c);
    else out += fmt::format("%{:02X}", c);
  }
  return out;
}

std::string list_query(const ListFilter& filter, int page) {
  std::string q;
  auto add = [&](const char* name, const std::string& value) {
    q += fmt::format("{}{}={}", q.empty() ? "?" : "&amp;", name, url_encode(value));
  };
  if (filter.kind) add("kind", *filter.kind);
  if (filter.phase) add("phase", *filter.phase);
  if (filter.prefix) add("q", *filter.prefix);
  if (page > 0) add("page", std::to_string(page + 1));
  return q;
}

std::string render_list_page(const std::string& bucket, const std::vector<KindStats>& stats,
                             const std::vector<MatterStatus>& matters, std::int64_t total, const ListFilter& filter,
                             const std::string& charts, int refresh_s) {
  std::string body = fmt::format("<h1>dmm bucket {}</h1>\n", html_escape(bucket));
  body += "<h2>The last 15 minutes</h2>\n<div class=\"charts\">\n" + charts + "</div>\n";
  body += "<h2>Matters by kind and phase</h2>\n<table><tr><th>kind</th>";
  for (const auto& [_, p] : detail::kPhases) body += fmt::format("<th>{}</th>", p);
  body += "<th>total</th><th>due now</th><th>due high/normal/low</th><th>in flight</th><th>global slots in use</th><th>rate limit</th><th>oldest due</th></tr>\n";
  for (const auto& k : stats) {
    body += fmt::format("<tr><td>{}</td>", list_link(k.kind, std::nullopt, k.kind));
    for (const auto& [_, p] : detail::kPhases) {
      auto it = k.phases.find(p);
      const auto n = it == k.phases.end() ? 0 : it->second;
      body += fmt::format("<td>{}</td>", n ? list_link(k.kind, std::string(p), std::to_string(n)) : "0");
    }
    body += fmt::format("<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                        k.total, k.due_now, due_by_priority_text(k), k.in_flight, slots_text(k), rate_text(k.rate),
                        or_dash(k.oldest_due));
  }
  if (stats.empty()) body += R"(<tr><td colspan="14">no matters in this bucket</td></tr>)";
  body += "</table>\n";

  body += R"(<form method="get" action="/">kind <select name="kind"><option value="">(all)</option>)";
  for (const auto& k : stats)
    body += fmt::format(R"(<option value="{}"{}>{}</option>)", html_escape(k.kind),
                        filter.kind == k.kind ? " selected" : "", html_escape(k.kind));
  body += R"(</select> phase <select name="phase"><option value="">(all)</option>)";
  for (const auto& [_, p] : detail::kPhases)
    body += fmt::format(R"(<option value="{}"{}>{}</option>)", p, filter.phase == std::string(p) ? " selected" : "", p);
  body += fmt::format(R"(</select> identity starts with <input type="search" name="q" id="search" value="{}">)"
                      R"( <button type="submit" id="search-button">search</button></form>)",
                      html_escape(filter.prefix.value_or("")));

  const std::int64_t first = static_cast<std::int64_t>(filter.page) * filter.limit;
  body += fmt::format("<h2>Matters{}{}{} <span class=\"muted\" id=\"shown\">({})</span></h2>\n",
                      filter.kind ? " of kind " + html_escape(*filter.kind) : "",
                      filter.phase ? " in phase " + html_escape(*filter.phase) : "",
                      filter.prefix ? " starting with " + html_escape(*filter.prefix) : "",
                      matters.empty() ? fmt::format("none of {}", total)
                                      : fmt::format("{}-{} of {}, natural order", first + 1,
                                                    first + static_cast<std::int64_t>(matters.size()), total));
  std::string pager;
  if (filter.page > 0)
    pager += fmt::format(R"(<a id="previous-page" href="/{}">&larr; previous {}</a> )", list_query(filter, filter.page - 1),
                         filter.limit);
  if (first + static_cast<std::int64_t>(matters.size()) < total)
    pager += fmt::format(R"(<a id="next-page" href="/{}">next {} &rarr;</a>)", list_query(filter, filter.page + 1),
                         filter.limit);
  if (!pager.empty()) body += "<p class=\"pager\">" + pager + "</p>\n";
  body += "<table><tr><th>kind</th><th>identity</th><th>phase</th><th>gen/mat</th><th>attempts</th>"
          "<th>next due</th><th>lease</th><th>last error</th></tr>\n";
  for (const auto& m : matters) {
    auto error = m.last_error.size() > 120 ? m.last_error.substr(0, 120) + "..." : m.last_error;
    body += fmt::format("<tr><td>{}</td><td>{}</td><td>{}</td><td>{}/{}</td><td>{}</td><td>{}</td><td>{}</td>"
                        "<td>{}</td></tr>\n",
                        html_escape(m.kind), matter_link(m.kind, m.identity), phase_cell(m.phase), m.generation,
                        m.materialized_generation, m.attempts, or_dash(m.due_at), or_dash(m.lease_owner),
                        html_escape(error));
  }
  body += "</table>\n";
  if (!pager.empty()) body += "<p class=\"pager\">" + pager + "</p>\n";
  return page("dmm: " + bucket, refresh_s, body);
}

std::string render_action_error(const std::string& bucket, const std::string& kind, const std::string& identity,
                                const std::string& message) {
  std::string body = fmt::format(R"(<p><a href="/">bucket {}</a> / {}</p>)", html_escape(bucket),
                                 list_link(kind, std::nullopt, kind));
  body += fmt::format("<p class=\"refused\" id=\"refused\">{}</p>\n", html_escape(message));
  body += fmt::format(R"(<p><a href="/matter?kind={}&amp;identity={}">back to {}</a></p>)", url_encode(kind),
                      url_encode(identity), html_escape(identity));
  return page("dmm: refused", 3600, body);
}

std::string render_matter_page(const std::string& bucket, const std::string& kind, const std::string& identity,
                               const std::optional<MatterDetail>& detail, bool actions_on, const std::string& notice,
                               int refresh_s) {
  std::string body = fmt::format(R"(<p><a href="/">bucket {}</a> / {}</p>)", html_escape(bucket),
                                 list_link(kind, std::nullopt, kind));
  body += fmt::format("<h1>{} <span class=\"muted\">{}</span></h1>\n", html_escape(identity), html_escape(kind));
  if (!notice.empty()) body += fmt::format("<p class=\"notice\" id=\"notice\">{}</p>\n", html_escape(notice));
  if (!detail) {
    body += "<p class=\"why\">no such matter (removed, or never notified)</p>";
    return page("dmm: " + identity, refresh_s, body);
  }
  const auto& m = detail->status;
  body += fmt::format("<p class=\"why\" id=\"why\">{}</p>\n<table>\n", html_escape(detail->why));
  auto row = [&](const char* name, const std::string& html) {
    body += fmt::format("<tr><th>{}</th><td>{}</td></tr>\n", name, html);
  };
  row("phase", phase_cell(m.phase) + (m.removing ? " (removal pending)" : ""));
  row("generation", fmt::format("{} (materialized {})", m.generation, m.materialized_generation));
  row("attempts", std::to_string(m.attempts));
  row("last error", or_dash(m.last_error));
  row("next due", or_dash(m.due_at));
  row("token re-sent at", or_dash(m.kick_at));
  row("lease", m.lease_owner.empty() ? "-"
                                     : fmt::format("{} since {}, until {}", html_escape(m.lease_owner),
                                                   html_escape(m.leased_at), html_escape(m.lease_until)));
  row("created", html_escape(m.created_at));
  row("updated", html_escape(m.updated_at));
  body += "</table>\n";
  for (const auto& [field, p] : steps_in(m.state)) {
    body += fmt::format("<h2>Steps <span class=\"muted\">({})</span></h2>\n", html_escape(field));
    if (!p) {
      body += "<p class=\"why\">this progress field does not decode</p>\n";
      continue;
    }
    body += fmt::format("<p id=\"steps-{}\">{} for generation {}{}</p>\n", html_escape(field), html_escape(p->phase),
                        p->generation, p->error.empty() ? "" : ": " + html_escape(p->error));
    body += "<table class=\"steps\"><tr><th>step</th><th>status</th><th>attempts</th><th>rollback attempts</th>"
            "<th>at</th><th>last error</th></tr>\n";
    for (const auto& r : p->steps)
      body += fmt::format("<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                          html_escape(r.name), html_escape(r.status), r.attempts, r.rollback_attempts,
                          or_dash(r.at), or_dash(r.last_error));
    body += "</table>\n";
  }
  body += "<h2>Actions</h2>\n";
  if (actions_on) {
    body += "<p>" + action_form("retry", kind, identity, "retry now") +
            action_form("remove", kind, identity, "remove (finalize, then delete)") + "</p>\n";
    body += "<p class=\"muted\">as dmmctl retry and dmmctl remove; each needs the endpoint's action token</p>\n";
  } else {
    body += "<p class=\"muted\" id=\"actions-off\">actions are off: start the endpoint with "
            "HttpOptions::action_token (DMM_HTTP_TOKEN) to retry or remove from here, or use dmmctl</p>\n";
  }
  body += "<h2>State</h2>\n<pre>";
  try {
    body += html_escape(nlohmann::json::parse(m.state).dump(2, ' ', false, nlohmann::json::error_handler_t::replace));
  } catch (const nlohmann::json::exception&) {
    body += html_escape(m.state);
  }
  body += "</pre>\n<h2>History <span class=\"muted\">(newest first)</span></h2>\n";
  body += "<table><tr><th>seq</th><th>gen</th><th>attempt</th><th>started</th><th>duration</th><th>outcome</th>"
          "<th>worker</th><th>error</th></tr>\n";
  for (const auto& a : detail->history)
    body += fmt::format("<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}ms</td><td>{}</td><td>{}</td>"
                        "<td>{}</td></tr>\n",
                        a.seq, a.generation, a.attempt, html_escape(a.started_at), a.duration_ms,
                        html_escape(a.outcome), html_escape(a.worker), html_escape(a.error));
  if (detail->history.empty()) body += R"(<tr><td colspan="8">no attempts recorded</td></tr>)";
  body += "</table>\n";
  return page("dmm: " + identity, refresh_s, body);
}

}  // namespace dmm::detail
