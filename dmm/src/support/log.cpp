// Text and JSON log formatters, and the per-thread matter they report.
#include "dmm/log.hpp"

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/formatter.h>
#include <spdlog/spdlog.h>

#include "dmm/errors.hpp"
#include "support/log_scope.hpp"

namespace dmm {
namespace detail {
namespace {
thread_local MatterLogFields current;
}

const MatterLogFields& current_matter() { return current; }

MatterLogScope::MatterLogScope(const std::string& bucket, const std::string& kind, const std::string& identity)
    : saved_(current) {
  current = {&bucket, &kind, &identity};
}

MatterLogScope::~MatterLogScope() { current = saved_; }

namespace {

std::string timestamp(const spdlog::details::log_msg& msg, bool iso) {
  using namespace std::chrono;
  const auto t = system_clock::to_time_t(msg.time);
  const auto ms = duration_cast<milliseconds>(msg.time.time_since_epoch()).count() % 1000;
  return iso ? fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:03}Z", fmt::gmtime(t), ms)
             : fmt::format("{:%Y-%m-%d %H:%M:%S}.{:03}", fmt::localtime(t), ms);
}

std::string_view level_name(spdlog::level::level_enum level) {
  const auto& name = spdlog::level::to_string_view(level);
  return {name.data(), name.size()};
}

std::string json_string(std::string_view s) {
  return nlohmann::json(std::string(s)).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

class TextFormatter : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    const std::string_view text(msg.payload.data(), msg.payload.size());
    std::string line = fmt::format("{} {:<5} {}", timestamp(msg, false), level_name(msg.level), text);
    const auto& m = current_matter();
    if (m.kind && (text.find("kind '") == std::string_view::npos || text.find("identity '") == std::string_view::npos))
      line += fmt::format(" [kind={} identity={}]", *m.kind, *m.identity);
    line += '\n';
    dest.append(line.data(), line.data() + line.size());
  }
  std::unique_ptr<spdlog::formatter> clone() const override { return std::make_unique<TextFormatter>(); }
};

class JsonFormatter : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    std::string line = fmt::format(R"({{"time":"{}","level":"{}","logger":{},"msg":{})", timestamp(msg, true),
                                   level_name(msg.level),
                                   json_string(std::string_view(msg.logger_name.data(), msg.logger_name.size())),
                                   json_string(std::string_view(msg.payload.data(), msg.payload.size())));
    const auto& m = current_matter();
    if (m.kind)
      line += fmt::format(R"(,"bucket":{},"kind":{},"identity":{})", json_string(*m.bucket), json_string(*m.kind),
                          json_string(*m.identity));
    line += "}\n";
    dest.append(line.data(), line.data() + line.size());
  }
  std::unique_ptr<spdlog::formatter> clone() const override { return std::make_unique<JsonFormatter>(); }
};

}  // namespace
}  // namespace detail

LogFormat parse_log_format(std::string_view name) {
  if (name == "text") return LogFormat::text;
  if (name == "json") return LogFormat::json;
  throw InvalidArgument(fmt::format("unknown log format '{}': use text or json", name));
}

std::unique_ptr<spdlog::formatter> make_log_formatter(LogFormat format) {
  if (format == LogFormat::json) return std::make_unique<detail::JsonFormatter>();
  return std::make_unique<detail::TextFormatter>();
}

}  // namespace dmm
