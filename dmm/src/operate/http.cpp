// The embedded HTTP endpoint (cpp-httplib): metrics, health, readiness, the
// web view and its actions. Handlers run on httplib's small thread pool; a
// sampler thread feeds the chart.
#include "operate/http.hpp"

#include <httplib.h>

#include <algorithm>
#include <condition_variable>
#include <fmt/format.h>
#include <mutex>
#include <stop_token>
#include <thread>
#include <tuple>

#include "dmm/dependency.hpp"
#include "dmm/errors.hpp"
#include "dmm/inspect.hpp"
#include "dmm/url.hpp"
#include "operate/chart.hpp"
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

int page_param(const httplib::Request& req) {
  const auto v = param(req, "page");
  if (!v) return 0;
  try {
    return std::clamp(std::stoi(*v), 1, 1'000'000) - 1;
  } catch (const std::logic_error&) {
    return 0;
  }
}

// Compares in time independent of where the strings differ (the token).
bool same_secret(const std::string& given, const std::string& expected) {
  unsigned diff = given.size() == expected.size() ? 0 : 1;
  for (std::size_t i = 0; i < expected.size(); ++i)
    diff |= static_cast<unsigned char>(expected[i]) ^ static_cast<unsigned char>(i < given.size() ? given[i] : 0);
  return diff == 0;
}

std::string matter_url(const std::string& kind, const std::string& identity) {
  return "/matter?kind=" + url_encode(kind) + "&identity=" + url_encode(identity);
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
  const StatusEndpoints endpoints;  // constant after construction
  const HttpOptions options;        // constant after construction; the token is never logged
  httplib::Server server;
  int port = 0;
  std::thread thread;
  SampleRing samples;       // thread-safe
  std::jthread sampler;     // samples every options.sample_every until stopped
  std::mutex sampler_mu;    // with sampler_cv: the sampler's stoppable wait
  std::condition_variable_any sampler_cv;

  Impl(StatusEndpoints e, HttpOptions o) : endpoints(std::move(e)), options(std::move(o)) {}

  void sample() {
    ChartSample s;
    s.at = std::chrono::system_clock::now();
    try {
      s.phases = phase_counts(endpoints.postgres, endpoints.bucket);
    } catch (const std::exception&) {
      // A gap in the chart; /readyz says why.
    }
    if (endpoints.counters) std::tie(s.materializations, s.errors) = endpoints.counters();
    samples.push(std::move(s));
  }

  void run_sampler(std::stop_token stop) {
    while (!stop.stop_requested()) {
      sample();
      std::unique_lock lock(sampler_mu);
      sampler_cv.wait_for(lock, stop, options.sample_every, [] { return false; });
    }
  }

  // The action's refusal (403), or nullopt when `req` may act.
  std::optional<std::string> refusal(const httplib::Request& req) const {
    if (options.action_token.empty())
      return "refused: actions are off on this endpoint (it was started without HttpOptions::action_token or "
             "DMM_HTTP_TOKEN); use dmmctl, or restart it with a token. Nothing was changed.";
    std::string given = req.get_header_value("X-DMM-Token");
    if (given.empty() && req.has_param("token")) given = req.get_param_value("token");
    if (given.empty())
      return "refused: this action needs the endpoint's action token (form field 'token' or header X-DMM-Token). "
             "Nothing was changed.";
    if (!same_secret(given, options.action_token))
      return "refused: the action token is wrong. Nothing was changed.";
    return std::nullopt;
  }

  // POST /matter/<action>: the same store transitions as dmmctl retry/remove.
  void act(const httplib::Request& req, httplib::Response& res, const std::string& action) {
    const auto kind = req.has_param("kind") ? req.get_param_value("kind") : "";
    const auto identity = req.has_param("identity") ? req.get_param_value("identity") : "";
    auto& log = *endpoints.logger;
    if (auto refused = refusal(req)) {
      log.warn("bucket '{}': web view refused {} of {} '{}' from {}: {}", endpoints.bucket, action, kind, identity,
               req.remote_addr, *refused);
      res.status = 403;
      res.set_content(render_action_error(endpoints.bucket, kind, identity, *refused), "text/html; charset=utf-8");
      return;
    }
    if (kind.empty() || identity.empty()) {
      res.status = 400;
      res.set_content(render_action_error(endpoints.bucket, kind, identity,
                                          "a " + action + " needs the form fields kind and identity"),
                      "text/html; charset=utf-8");
      return;
    }
    const InspectQuery q{.postgres = endpoints.postgres, .bucket = endpoints.bucket, .kind = kind, .identity = identity};
    std::int64_t n = 0;
    try {
      n = action == "retry" ? retry_matters(q) : remove_matters(q);
    } catch (const DependencyError& e) {
      res.status = 409;
      res.set_content(render_action_error(endpoints.bucket, kind, identity, e.what()), "text/html; charset=utf-8");
      return;
    }
    log.info("bucket '{}': web view {} of {} '{}' from {}: {} matter(s)", endpoints.bucket, action, kind, identity,
             req.remote_addr, n);
    res.set_redirect(matter_url(kind, identity) + "&done=" + action + "&n=" + std::to_string(n), 303);
  }

  static std::string notice(const httplib::Request& req) {
    const auto done = param(req, "done");
    if (!done) return "";
    const auto n = param(req, "n").value_or("0");
    if (*done == "retry")
      return n == "0" ? "retry: nothing to retry (only failed or retrying matters run again)"
                      : "retry: the matter runs again now (attempts reset)";
    if (*done == "remove")
      return n == "0" ? "remove: nothing was removed" : "remove: marked for removal (finalize, then delete)";
    return "";
  }

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
      ListFilter filter{param(req, "kind"), param(req, "phase"), param(req, "q"), page_param(req)};
      auto stats = kind_stats(endpoints.postgres, endpoints.bucket);
      InspectQuery q{.postgres = endpoints.postgres, .bucket = endpoints.bucket, .kind = filter.kind,
                     .phase = filter.phase, .limit = filter.limit, .identity_prefix = filter.prefix,
                     .natural_order = true, .offset = filter.page * filter.limit};
      auto matters = inspect(q);
      const auto total = count_matters(q);
      const auto charts = render_charts(samples.snapshot(), std::chrono::system_clock::now(), options.sample_every);
      res.set_content(render_list_page(endpoints.bucket, stats, matters, total, filter, charts, kRefreshSeconds),
                      "text/html; charset=utf-8");
    });
    server.Get("/matter", [this](const httplib::Request& req, httplib::Response& res) {
      const auto kind = param(req, "kind").value_or("");
      const auto identity = req.get_param_value("identity");
      auto detail = describe(endpoints.postgres, endpoints.bucket, kind, identity);
      if (!detail) res.status = 404;
      res.set_content(render_matter_page(endpoints.bucket, kind, identity, detail, !options.action_token.empty(),
                                         notice(req), kRefreshSeconds),
                      "text/html; charset=utf-8");
    });
    server.Post("/matter/retry", [this](const httplib::Request& req, httplib::Response& res) { act(req, res, "retry"); });
    server.Post("/matter/remove",
                [this](const httplib::Request& req, httplib::Response& res) { act(req, res, "remove"); });
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

HttpServer::HttpServer(const std::string& address, StatusEndpoints endpoints, HttpOptions options)
    : impl_(std::make_unique<Impl>(std::move(endpoints), std::move(options))) {
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
  impl_->sampler = std::jthread([this](std::stop_token stop) { impl_->run_sampler(stop); });
  impl_->endpoints.logger->info(
      "bucket '{}': serving /metrics, /healthz, /readyz and the web view on http://{}:{}/ (actions {})",
      impl_->endpoints.bucket, host, impl_->port, impl_->options.action_token.empty() ? "off" : "on, with a token");
}

HttpServer::~HttpServer() {
  impl_->sampler.request_stop();
  if (impl_->sampler.joinable()) impl_->sampler.join();
  impl_->server.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

int HttpServer::port() const { return impl_->port; }

}  // namespace dmm::detail
