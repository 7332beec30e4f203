// The embedded HTTP endpoint (cpp-httplib): metrics, health, readiness and the
// web view. Handlers run on httplib's small thread pool and only read.
#include "operate/http.hpp"

#include <httplib.h>

#include <fmt/format.h>
#include <thread>

#include "dmm/errors.hpp"
#include "dmm/inspect.hpp"
#include "dmm/url.hpp"
#include "operate/web_view.hpp"

namespace dmm::detail {
namespace {

constexpr int kRefreshSeconds = 2;

std::optional<std::string> param(const httplib::Request& req, const char* name) {
  if (!req.has_param(name)) return std::nullopt;
  auto v = req.get_param_value(name);
  if (v.empty()) return std::nullopt;
  return v;
}

std::pair<std::string, int> parse_address(const std::string& address) {
  const auto colon = address.rfind(':');
  auto bad = [&] {
    return InvalidArgument(fmt::format("HTTP address '{}' is not [host]:port (e.g. :9464 or 127.0.0.1:9464)", address));
  };
  if (colon == std::string::npos) throw bad();
  std::string host = address.substr(0, colon);
  if (host.empty()) host = "0.0.0.0";
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  int port = 0;
  try {
    std::size_t used = 0;
    port = std::stoi(address.substr(colon + 1), &used);
    if (used != address.size() - colon - 1) throw bad();
  } catch (const std::logic_error&) {
    throw bad();
  }
  if (port < 0 || port > 65535) throw bad();
  return {host, port};
}

}  // namespace

struct HttpServer::Impl {
  const StatusEndpoints endpoints;
  httplib::Server server;
  int port = 0;
  std::thread thread;

  explicit Impl(StatusEndpoints e) : endpoints(std::move(e)) {}

  void routes() {
    server.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
      res.set_content("ok\n", "text/plain; charset=utf-8");
    });
    server.Get("/readyz", [this](const httplib::Request&, httplib::Response& res) {
      auto [ready, text] = endpoints.readiness();
      res.status = ready ? 200 : 503;
      res.set_content((ready ? "ready\n" : "not ready\n") + text, "text/plain; charset=utf-8");
    });
    server.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(endpoints.metrics(), "text/plain; version=0.0.4; charset=utf-8");
    });
    server.Get("/", [this](const httplib::Request& req, httplib::Response& res) {
      ListFilter filter{param(req, "kind"), param(req, "phase")};
      auto stats = kind_stats(endpoints.postgres, endpoints.bucket);
      auto matters = inspect({.postgres = endpoints.postgres, .bucket = endpoints.bucket, .kind = filter.kind,
                              .phase = filter.phase, .limit = filter.limit});
      res.set_content(render_list_page(endpoints.bucket, stats, matters, filter, kRefreshSeconds),
                      "text/html; charset=utf-8");
    });
    server.Get("/matter", [this](const httplib::Request& req, httplib::Response& res) {
      const auto kind = param(req, "kind").value_or("");
      const auto identity = req.get_param_value("identity");
      auto detail = describe(endpoints.postgres, endpoints.bucket, kind, identity);
      if (!detail) res.status = 404;
      res.set_content(render_matter_page(endpoints.bucket, kind, identity, detail, kRefreshSeconds),
                      "text/html; charset=utf-8");
    });
    server.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "unknown error";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      res.status = 500;
      res.set_content("error: " + mask_url(what) + "\n", "text/plain; charset=utf-8");
    });
  }
};

HttpServer::HttpServer(const std::string& address, StatusEndpoints endpoints)
    : impl_(std::make_unique<Impl>(std::move(endpoints))) {
  auto [host, port] = parse_address(address);
  // httplib owns (and deletes) the queue it is handed.
  impl_->server.new_task_queue = [] { return new httplib::ThreadPool(4); };
  impl_->routes();
  if (port == 0) {
    impl_->port = impl_->server.bind_to_any_port(host);
  } else if (impl_->server.bind_to_port(host, port)) {
    impl_->port = port;
  } else {
    impl_->port = -1;
  }
  if (impl_->port <= 0)
    throw Error(fmt::format("bucket '{}': cannot listen for HTTP on {} (port in use, or a bad host?)",
                            impl_->endpoints.bucket, address));
  impl_->thread = std::thread([this] { impl_->server.listen_after_bind(); });
  // stop() before the listen loop runs would be lost (and join would hang).
  while (!impl_->server.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  impl_->endpoints.logger->info("bucket '{}': serving /metrics, /healthz, /readyz and the web view on http://{}:{}/",
                                impl_->endpoints.bucket, host, impl_->port);
}

HttpServer::~HttpServer() {
  impl_->server.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

int HttpServer::port() const { return impl_->port; }

}  // namespace dmm::detail
