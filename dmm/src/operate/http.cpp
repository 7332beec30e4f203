// The embedded HTTP endpoint (cpp-httplib): metrics, health, readiness and the
// web view. Handlers run on httplib's small thread pool and only read.
#include "operate/http.hpp"

#include <httplib.h>

#include <fmt/format.h>
#include <thread>

#include "bucket/bucket_core.hpp"
#include "dmm/errors.hpp"
#include "dmm/inspect.hpp"
#include "dmm/url.hpp"
#include "operate/web_view.hpp"
#include "engine/work_stream_engine.hpp"

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
  BucketCore& core;
  httplib::Server server;
  int port = 0;
  std::thread thread;

  explicit Impl(BucketCore& c) : core(c) {}

  std::string metrics_text() {
    std::map<std::string, KindGauges> gauges;
    std::string up = "1";
    try {
      for (auto& k : kind_stats(core.options.postgres, core.options.name))
        gauges[k.kind] = KindGauges{k.phases, k.due_now};
    } catch (const std::exception&) {
      up = "0";
    }
    for (auto* kind : core.kinds()) gauges.try_emplace(kind->name);
    auto text = core.metrics.render(core.options.name, gauges);
    text += fmt::format("# HELP dmm_postgres_up Whether the last scrape could read PostgreSQL.\n"
                        "# TYPE dmm_postgres_up gauge\ndmm_postgres_up{{bucket=\"{}\"}} {}\n",
                        core.options.name, up);
    return text;
  }

  // (ready, one line per check)
  std::pair<bool, std::string> readiness() {
    bool ready = true;
    std::string out;
    try {
      core.pool.ping();
      out += "postgres: ok\n";
    } catch (const std::exception& e) {
      ready = false;
      out += fmt::format("postgres: unreachable ({})\n", mask_url(e.what()));
    }
    if (core.nats->connected()) {
      out += "nats: ok\n";
    } else {
      ready = false;
      out += "nats: not connected\n";
    }
    auto kinds = core.kinds();
    if (kinds.empty()) {
      ready = false;
      out += "consumers: no kind registered\n";
    }
    for (auto* kind : kinds) {
      const bool bound = kind->stream->engine().bound();
      ready = ready && bound;
      out += fmt::format("consumer {}: {}\n", kind->name, bound ? "bound" : "not bound (work() not running?)");
    }
    return {ready, out};
  }

  void routes() {
    server.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
      res.set_content("ok\n", "text/plain; charset=utf-8");
    });
    server.Get("/readyz", [this](const httplib::Request&, httplib::Response& res) {
      auto [ready, text] = readiness();
      res.status = ready ? 200 : 503;
      res.set_content((ready ? "ready\n" : "not ready\n") + text, "text/plain; charset=utf-8");
    });
    server.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(metrics_text(), "text/plain; version=0.0.4; charset=utf-8");
    });
    server.Get("/", [this](const httplib::Request& req, httplib::Response& res) {
      ListFilter filter{param(req, "kind"), param(req, "phase")};
      auto stats = kind_stats(core.options.postgres, core.options.name);
      auto matters = inspect({.postgres = core.options.postgres, .bucket = core.options.name, .kind = filter.kind,
                              .phase = filter.phase, .limit = filter.limit});
      res.set_content(render_list_page(core.options.name, stats, matters, filter, kRefreshSeconds),
                      "text/html; charset=utf-8");
    });
    server.Get("/matter", [this](const httplib::Request& req, httplib::Response& res) {
      const auto kind = param(req, "kind").value_or("");
      const auto identity = req.get_param_value("identity");
      auto detail = describe(core.options.postgres, core.options.name, kind, identity);
      if (!detail) res.status = 404;
      res.set_content(render_matter_page(core.options.name, kind, identity, detail, kRefreshSeconds),
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

HttpServer::HttpServer(BucketCore& core, const std::string& address) : impl_(std::make_unique<Impl>(core)) {
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
                            core.options.name, address));
  impl_->thread = std::thread([this] { impl_->server.listen_after_bind(); });
  // stop() before the listen loop runs would be lost (and join would hang).
  while (!impl_->server.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  core.logger->info("bucket '{}': serving /metrics, /healthz, /readyz and the web view on http://{}:{}/",
                    core.options.name, host, impl_->port);
}

HttpServer::~HttpServer() {
  impl_->server.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

int HttpServer::port() const { return impl_->port; }

}  // namespace dmm::detail
