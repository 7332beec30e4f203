// The embedded HTTP endpoint of a worker process (Bucket::serve_http):
// /metrics, /healthz, /readyz and the read-only web view.
#pragma once

#include <memory>
#include <string>

namespace dmm::detail {

class BucketCore;

class HttpServer {
 public:
  // Binds `address` ("[host]:port"; ":9464" = every interface, port 0 = any
  // free port) and serves on a thread of its own. InvalidArgument for a
  // malformed address, Error when it cannot bind.
  HttpServer(BucketCore& core, const std::string& address);
  ~HttpServer();  // stops serving and joins
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dmm::detail
