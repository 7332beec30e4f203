// The pieces of the operating views that need no servers: HTML escaping, the
// Prometheus text, the log formats.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>
#include <sstream>

#include "dmm/errors.hpp"
#include "dmm/inspect.hpp"
#include "dmm/log.hpp"
#include "support/log_scope.hpp"
#include "engine/metrics.hpp"
#include "operate/chart.hpp"
#include "operate/web_view.hpp"

TEST_CASE("the web view escapes stored strings and encodes links", "[operate]") {
  CHECK(dmm::detail::html_escape("a<b>&\"'ü") == "a&lt;b&gt;&amp;&quot;&#39;ü");
  CHECK(dmm::detail::url_encode("a b/ü&") == "a%20b%2F%C3%BC%26");
  dmm::MatterStatus m;
  m.kind = "k";
  m.identity = "<script>alert(1)</script>";
  m.phase = "failed";
  m.last_error = "<img src=x>";
  m.state = "{\"x\":\"</pre>\"}";
  auto list = dmm::detail::render_list_page("b", {}, {m}, 1, {}, "", 2);
  CHECK(list.find("<script>") == std::string::npos);
  CHECK(list.find("<img") == std::string::npos);
  CHECK(list.find("&lt;script&gt;alert(1)&lt;/script&gt;") != std::string::npos);
  auto page =
      dmm::detail::render_matter_page("b", "k", m.identity, dmm::MatterDetail{m, {}, "why <now>"}, true, "", 2);
  CHECK(page.find("<script>") == std::string::npos);
  CHECK(page.find("why &lt;now&gt;") != std::string::npos);
  CHECK(page.find("&lt;/pre&gt;") != std::string::npos);
  // The action forms carry the identity escaped, and POST.
  CHECK(page.find("value=\"&lt;script&gt;alert(1)&lt;/script&gt;\"") != std::string::npos);
  CHECK(page.find("method=\"post\" action=\"/matter/retry\"") != std::string::npos);
}

TEST_CASE("the web view's chart draws each phase and the rates from the samples", "[operate]") {
  using namespace std::chrono;
  const auto now = system_clock::now();
  std::vector<dmm::detail::ChartSample> samples;
  for (int i = 0; i < 3; ++i) {
    dmm::detail::ChartSample s;
    s.at = now - seconds(10 - 5 * i);
    s.phases = std::map<std::string, std::int64_t>{{"ready", 2 * i}};
    s.materializations = static_cast<std::uint64_t>(10 * i);  // 2/s
    s.errors = static_cast<std::uint64_t>(i);
    samples.push_back(s);
  }
  const auto svg = dmm::detail::render_charts(samples, now, seconds(5));
  CHECK(svg.find("id=\"chart-phases\"") != std::string::npos);
  CHECK(svg.find("data-series=\"ready\" data-points=\"3\"") != std::string::npos);
  CHECK(svg.find(">ready 4<") != std::string::npos);
  CHECK(svg.find(">materializations/s 2<") != std::string::npos);
  CHECK(svg.find(">errors/s 0.20<") != std::string::npos);
  CHECK(dmm::detail::render_charts({}, now, seconds(5)).find("collecting samples") != std::string::npos);
  dmm::detail::ListFilter filter;
  filter.kind = "a b";
  filter.prefix = "p&";
  CHECK(dmm::detail::list_query(filter, 2) == "?kind=a%20b&amp;q=p%26&amp;page=3");
}

TEST_CASE("metrics render in Prometheus text format with cumulative buckets", "[operate]") {
  dmm::detail::Metrics metrics;
  auto& k = metrics.kind("k\"1");
  k.observe(0, 2'000, 1);       // done in 2 ms
  k.observe(2, 3'000'000, 2);   // retry in 3 s, a retry itself
  auto text = metrics.render("b", {{"k\"1", {{{"ready", 4}}, 7, {{"high", 3}, {"normal", 4}}, 2, 5, 3, 0.5}}});
  CHECK_THAT(text, Catch::Contains("dmm_materializations_total{bucket=\"b\",kind=\"k\\\"1\",outcome=\"done\"} 1"));
  CHECK_THAT(text, Catch::Contains("dmm_materialization_duration_seconds_bucket{bucket=\"b\",kind=\"k\\\"1\",le=\"0.005\"} 1"));
  CHECK_THAT(text, Catch::Contains("dmm_materialization_duration_seconds_bucket{bucket=\"b\",kind=\"k\\\"1\",le=\"5\"} 2"));
  CHECK_THAT(text, Catch::Contains("dmm_materialization_duration_seconds_count{bucket=\"b\",kind=\"k\\\"1\"} 2"));
  CHECK_THAT(text, Catch::Contains("dmm_retries_total{bucket=\"b\",kind=\"k\\\"1\"} 1"));
  CHECK_THAT(text, Catch::Contains("dmm_due{bucket=\"b\",kind=\"k\\\"1\"} 7"));
  CHECK_THAT(text, Catch::Contains("dmm_gave_up{bucket=\"b\",kind=\"k\\\"1\"} 2"));
  CHECK_THAT(text, Catch::Contains("dmm_due_by_priority{bucket=\"b\",kind=\"k\\\"1\",priority=\"high\"} 3"));
  CHECK_THAT(text, Catch::Contains("dmm_due_by_priority{bucket=\"b\",kind=\"k\\\"1\",priority=\"low\"} 0"));
  CHECK_THAT(text, Catch::Contains("dmm_matters{bucket=\"b\",kind=\"k\\\"1\",phase=\"ready\"} 4"));
  CHECK_THAT(text, Catch::Contains("dmm_global_slots{bucket=\"b\",kind=\"k\\\"1\"} 5"));
  CHECK_THAT(text, Catch::Contains("dmm_global_slots_in_use{bucket=\"b\",kind=\"k\\\"1\"} 3"));
  CHECK_THAT(text, Catch::Contains("dmm_rate_limit_available{bucket=\"b\",kind=\"k\\\"1\"} 0.500"));
}

TEST_CASE("json logs name the matter a line is about; text logs stay readable", "[operate]") {
  std::ostringstream out;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out);
  spdlog::logger log("t", sink);
  log.set_formatter(dmm::make_log_formatter(dmm::LogFormat::json));
  const std::string bucket = "b", kind = "k", identity = "id \"1\"\n";
  {
    dmm::detail::MatterLogScope scope(bucket, kind, identity);
    log.warn("attempt {} failed", 2);
  }
  log.info("no matter");
  std::istringstream lines(out.str());
  std::string line;
  REQUIRE(std::getline(lines, line));
  auto first = nlohmann::json::parse(line);
  CHECK(first["level"] == "warning");
  CHECK(first["msg"] == "attempt 2 failed");
  CHECK(first["kind"] == "k");
  CHECK(first["identity"] == identity);
  CHECK(first["bucket"] == "b");
  REQUIRE(std::getline(lines, line));
  auto second = nlohmann::json::parse(line);
  CHECK_FALSE(second.contains("kind"));

  out.str("");
  log.set_formatter(dmm::make_log_formatter(dmm::parse_log_format("text")));
  const std::string kitchen = "kitchen";
  {
    dmm::detail::MatterLogScope scope(bucket, kind, kitchen);
    log.info("playing");
  }
  CHECK_THAT(out.str(), Catch::EndsWith("info  playing [kind=k identity=kitchen]\n"));
  CHECK_THROWS_AS(dmm::parse_log_format("xml"), dmm::InvalidArgument);
}
