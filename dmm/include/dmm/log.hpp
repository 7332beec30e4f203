// Log formats for dmm's logs (and the application's, if it likes them).
//
// - text (default): readable lines, "2025-01-31 12:00:00.123 warn  message".
// - json: one JSON object per line for log collectors: time (UTC, ISO 8601),
//   level, logger, msg, and — for every line about a matter — bucket, kind and
//   identity as separate fields.
//
// Lines written while a matter is being materialized (dmm's own and the
// materializer's through ctx.log()) are about that matter: in text they end
// with "[kind=K identity=I]" unless the message already names both, in json
// they carry the fields. dmm's own lines about a matter always name its kind
// and identity.
#pragma once

#include <memory>
#include <spdlog/formatter.h>
#include <string_view>

namespace dmm {

enum class LogFormat { text, json };

// "text" or "json"; InvalidArgument naming the choices otherwise.
LogFormat parse_log_format(std::string_view name);

// A formatter for spdlog sinks: logger->set_formatter(make_log_formatter(f)),
// or spdlog::set_formatter(...) for every logger.
std::unique_ptr<spdlog::formatter> make_log_formatter(LogFormat format);

}  // namespace dmm
