// The embedded HTTP endpoint of a worker process (Bucket::serve_http):
// /metrics, /healthz, /readyz and the web view, with its chart and actions.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <spdlog/logger.h>
#include <string>
#include <utility>

#include "dmm/options.hpp"

namespace dmm::detail {

// What the endpoint serves, handed in by the bucket (bucket/status.cpp).
struct StatusEndpoints {
  std::string bucket;
  std::string postgres;  // URL, for the web view's reads
  spdlog::logger* logger = nullptr;
  std::function<std::string()> metrics;                     // Prometheus text
  std::function<std::pair<bool, std::string>()> readiness;  // (ready, one line per check)
  // This process's counters for the chart: (attempts finished, failed ones).
  std::function<std::pair<std::uint64_t, std::uint64_t>()> counters;
};

class HttpServer {
 public:
  // Binds `address` ("[host]:port"; ":9464" = every interface, port 0 = any
  // free port) and serves on a thread of its own. InvalidArgument for a
  // malformed address, Error when it cannot bind. `options` must be valid
  // (bucket/options.cpp checks them).
  HttpServer(const std::string& address, StatusEndpoints endpoints, HttpOptions options);
  ~HttpServer();  // stops serving and joins
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dmm::detail
