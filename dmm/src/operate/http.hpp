// The embedded HTTP endpoint of a worker process (Bucket::serve_http):
// /metrics, /healthz, /readyz and the read-only web view.
#pragma once

#include <functional>
#include <memory>
#include <spdlog/logger.h>
#include <string>
#include <utility>

namespace dmm::detail {

// What the endpoint serves, handed in by the bucket (bucket/status.cpp).
struct StatusEndpoints {
  std::string bucket;
  std::string postgres;  // URL, for the web view's reads
  spdlog::logger* logger = nullptr;
  std::function<std::string()> metrics;                     // Prometheus text
  std::function<std::pair<bool, std::string>()> readiness;  // (ready, one line per check)
};

class HttpServer {
 public:
  // Binds `address` ("[host]:port"; ":9464" = every interface, port 0 = any
  // free port) and serves on a thread of its own. InvalidArgument for a
  // malformed address, Error when it cannot bind.
  HttpServer(const std::string& address, StatusEndpoints endpoints);
  ~HttpServer();  // stops serving and joins
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dmm::detail
