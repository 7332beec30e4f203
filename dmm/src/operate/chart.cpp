// The web view's chart (see chart.hpp): a ring of samples and its SVG.
#include "operate/chart.hpp"

#include <algorithm>
#include <fmt/format.h>

#include "protocol/vocabulary.hpp"

namespace dmm::detail {
namespace {

using Clock = std::chrono::system_clock;

// Plot area inside a 720 x 200 SVG.
constexpr double kLeft = 50, kRight = 560, kTop = 12, kBottom = 170;

// One colour per phase, as the page's phase-* classes; the rates after them.
const char* phase_colour(const std::string& phase) {
  if (phase == "ready") return "#176f2c";
  if (phase == "failed") return "#b00020";
  if (phase == "retrying") return "#b35c00";
  if (phase == "reconciling") return "#0050a0";
  if (phase == "deleting") return "#999999";
  return "#555555";  // pending
}

struct Series {
  std::string name, colour;
  std::vector<std::pair<Clock::time_point, double>> points;
};

// A round upper bound for the y axis (1, 2, 5, 10, 20, 50, ...).
double nice_max(double v) {
  double step = 1;
  while (true) {
    for (double m : {1.0, 2.0, 5.0})
      if (v <= step * m) return step * m;
    step *= 10;
  }
}

std::string number(double v) {
  if (v == static_cast<double>(static_cast<std::int64_t>(v))) return fmt::format("{}", static_cast<std::int64_t>(v));
  return fmt::format("{:.2f}", v);
}

std::string render_chart(const std::string& id, const std::string& title, const std::vector<Series>& series,
                         Clock::time_point now, const std::string& empty_text) {
  const auto start = now - kChartWindow;
  const double span_ms = std::chrono::duration<double, std::milli>(kChartWindow).count();
  double top = 0;
  for (const auto& s : series)
    for (const auto& [_, v] : s.points) top = std::max(top, v);
  top = nice_max(std::max(top, 1.0));
  auto x = [&](Clock::time_point t) {
    const double f = std::chrono::duration<double, std::milli>(t - start).count() / span_ms;
    return kLeft + std::clamp(f, 0.0, 1.0) * (kRight - kLeft);
  };
  auto y = [&](double v) { return kBottom - v / top * (kBottom - kTop); };

  std::string svg = fmt::format(
      R"(<svg id="{}" class="chart" xmlns="http://www.w3.org/2000/svg" width="720" height="200" viewBox="0 0 720 200" role="img" aria-label="{}">)"
      "\n<title>{}</title>\n",
      id, title, title);
  // Axes, the top value and the time marks.
  svg += fmt::format(R"(<line x1="{0}" y1="{1}" x2="{2}" y2="{1}" stroke="#888"/><line x1="{0}" y1="{3}" x2="{0}" y2="{1}" stroke="#888"/>)"
                     "\n",
                     kLeft, kBottom, kRight, kTop);
  svg += fmt::format(R"(<line x1="{0}" y1="{1}" x2="{2}" y2="{1}" stroke="#eee"/><text x="{3}" y="{4}" font-size="11" text-anchor="end" class="y-max">{5}</text><text x="{3}" y="{6}" font-size="11" text-anchor="end">0</text>)"
                     "\n",
                     kLeft + 1, kTop, kRight, kLeft - 4, kTop + 4, number(top), kBottom + 4);
  for (int m : {15, 10, 5, 0})
    svg += fmt::format(R"(<text x="{}" y="{}" font-size="11" text-anchor="middle">{}</text>)", x(now - std::chrono::minutes(m)),
                       kBottom + 16, m ? fmt::format("-{}m", m) : std::string("now"));
  svg += "\n";
  bool any = false;
  double legend_y = kTop + 4;
  for (const auto& s : series) {
    std::string points;
    for (const auto& [t, v] : s.points) points += fmt::format("{:.1f},{:.1f} ", x(t), y(v));
    if (!points.empty()) points.pop_back();
    any = any || s.points.size() >= 2;
    svg += fmt::format(R"(<polyline class="series" data-series="{}" data-points="{}" fill="none" stroke="{}" stroke-width="2" points="{}"/>)"
                       "\n",
                       s.name, s.points.size(), s.colour, points);
    const std::string last = s.points.empty() ? "-" : number(s.points.back().second);
    svg += fmt::format(R"(<rect x="572" y="{}" width="10" height="10" fill="{}"/><text x="588" y="{}" font-size="12" class="legend" data-series="{}">{} {}</text>)"
                       "\n",
                       legend_y - 9, s.colour, legend_y, s.name, s.name, last);
    legend_y += 16;
  }
  if (!any)
    svg += fmt::format(R"(<text x="{}" y="{}" font-size="12" fill="#777" text-anchor="middle">{}</text>)" "\n",
                       (kLeft + kRight) / 2, (kTop + kBottom) / 2, empty_text);
  svg += "</svg>\n";
  return svg;
}

}  // namespace

void SampleRing::push(ChartSample sample) {
  std::lock_guard lock(mu_);
  samples_.push_back(std::move(sample));
  const auto oldest = samples_.back().at - kChartWindow - std::chrono::minutes(1);
  while (!samples_.empty() && samples_.front().at < oldest) samples_.pop_front();
}

std::vector<ChartSample> SampleRing::snapshot() const {
  std::lock_guard lock(mu_);
  return {samples_.begin(), samples_.end()};
}

std::string render_charts(const std::vector<ChartSample>& samples, Clock::time_point now,
                          std::chrono::milliseconds sample_every) {
  const auto start = now - kChartWindow;
  std::vector<Series> phases;
  for (const auto& [_, name] : kPhases) phases.push_back({name, phase_colour(name), {}});
  Series done{"materializations/s", "#0050a0", {}}, errors{"errors/s", "#b00020", {}};
  const ChartSample* previous = nullptr;
  for (const auto& s : samples) {
    if (s.at >= start && s.phases)
      for (auto& p : phases) {
        auto it = s.phases->find(p.name);
        p.points.emplace_back(s.at, it == s.phases->end() ? 0.0 : static_cast<double>(it->second));
      }
    if (previous && s.at >= start) {
      const double dt = std::chrono::duration<double>(s.at - previous->at).count();
      if (dt > 0) {
        done.points.emplace_back(s.at, static_cast<double>(s.materializations - previous->materializations) / dt);
        errors.points.emplace_back(s.at, static_cast<double>(s.errors - previous->errors) / dt);
      }
    }
    previous = &s;
  }
  const auto waiting = fmt::format("collecting samples (one every {}ms)", sample_every.count());
  return render_chart("chart-phases", "matters by phase, last 15 minutes", phases, now, waiting) +
         render_chart("chart-rates", "materializations/s and errors/s in this process, last 15 minutes",
                      {done, errors}, now, waiting);
}

}  // namespace dmm::detail
