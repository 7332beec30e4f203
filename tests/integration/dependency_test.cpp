// Dependencies between matters (dmm/dependency.hpp): dependents are notified
// when a dependency becomes ready or changes, never lose that wake-up while
// they run, removal of a depended-on matter is refused, cycles are refused.
#include <catch2/catch.hpp>

#include "harness.hpp"

using namespace dmm_test;

namespace {

// A dependency: ready as soon as it is materialized.
struct Asset {
  std::string path;
  std::string content;
  std::string identity() const { return path; }
  dmm::Result materialize(dmm::Context& ctx) {
    ctx.service<Recorder>().record("asset:" + path, {.value = content});
    return dmm::Result::done();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Asset, path, content)

// A dependent: waits for its assets (require_ready), records what it saw.
struct Server {
  std::string name;
  std::vector<std::string> assets;
  std::string identity() const { return name; }
  std::vector<dmm::Dependency> dependencies() const {
    std::vector<dmm::Dependency> deps;
    for (const auto& a : assets) deps.push_back({"asset", a});
    return deps;
  }
  dmm::Result materialize(dmm::Context& ctx) {
    ctx.require_ready(dependencies());
    ctx.service<Recorder>().record("server:" + name, {.attempt = ctx.attempt()});
    return dmm::Result::done();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Server, name, assets)

// Declares arbitrary dependencies on other nodes (for cycles).
struct Node {
  std::string id;
  std::vector<std::string> needs;
  std::string identity() const { return id; }
  std::vector<dmm::Dependency> dependencies() const {
    std::vector<dmm::Dependency> deps;
    for (const auto& n : needs) deps.push_back({"node", n});
    return deps;
  }
  dmm::Result materialize(dmm::Context&) { return dmm::Result::done(); }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Node, id, needs)

// A dependent that records whether its dependency was ready; its first run
// waits at the gate, so the dependency becomes ready while it holds the lease.
struct Watcher {
  std::string name;
  std::string asset;
  std::string identity() const { return name; }
  std::vector<dmm::Dependency> dependencies() const { return {{"asset", asset}}; }
  dmm::Result materialize(dmm::Context& ctx) {
    const bool ready = ctx.ready({"asset", asset});
    ctx.service<Recorder>().record("watcher:" + name, {.value = ready ? "ready" : "not ready"});
    auto& gate = ctx.service<Gate>();
    if (gate.arrived() == 0) {
      gate.arrive();
      gate.wait(ctx.stop_token());
    }
    return dmm::Result::done();  // does not insist: the wake-up must bring it back
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Watcher, name, asset)

struct Fixture {
  std::string name = unique_name("deps");
  dmm::Bucket bucket = open_bucket(name);
  std::shared_ptr<Recorder> recorder = std::make_shared<Recorder>();
  Fixture() { bucket.provide(recorder); }
  bool converged(const std::string& kind, const std::string& id) {
    auto r = query_matter(name, kind, id);
    return r && r->phase == "ready" && r->materialized_generation == r->generation;
  }
  std::function<std::string()> describe() {
    return [n = name] { return describe_unconverged(n); };
  }
};

// A backoff far longer than any wait below: convergence within the wait
// proves the dependent was notified, not retried on a timer.
dmm::KindOptions patient_kind() {
  auto options = fast_kind();
  options.backoff = {.initial = 60'000ms, .max = 60'000ms, .multiplier = 1.0, .jitter = 0.0};
  return options;
}

}  // namespace

TEST_CASE("a dependent waits for its dependency and is notified when it becomes ready", "[dependency]") {
  Fixture f;
  f.bucket.register_kind<Asset>("asset", fast_kind());
  f.bucket.register_kind<Server>("server", patient_kind());
  Runner runner(f.bucket);

  f.bucket.notify(Server{.name = "web", .assets = {"index.html", "style.css"}});
  wait_until(
      [&] {
        auto r = query_matter(f.name, "server", "web");
        return r && r->phase == "retrying" && r->last_error.find("waiting for asset 'index.html'") != std::string::npos;
      },
      10s, "web to wait for index.html", f.describe());

  f.bucket.notify(Asset{.path = "index.html", .content = "<h1>hi</h1>"});
  wait_until(
      [&] {
        auto r = query_matter(f.name, "server", "web");
        return f.converged("asset", "index.html") && r &&
               r->last_error.find("waiting for asset 'style.css'") != std::string::npos;
      },
      10s, "web to be notified by index.html and then wait for style.css", f.describe());
  CHECK(f.recorder->count("server:web") == 0);

  f.bucket.notify(Asset{.path = "style.css", .content = "h1 {}"});
  wait_until([&] { return f.converged("server", "web"); }, 10s, "web to become ready once both assets are",
             f.describe());
  CHECK(f.recorder->count("server:web") == 1);

  SECTION("a change of a dependency notifies its dependents again") {
    f.bucket.notify(Asset{.path = "style.css", .content = "h1 { color: red }"});
    wait_until([&] { return f.recorder->count("server:web") == 2 && f.converged("server", "web"); }, 10s,
               "web to run again after style.css changed", f.describe());
  }
  SECTION("notifying a dependency's identical state does not wake its dependents") {
    f.bucket.notify(Asset{.path = "style.css", .content = "h1 {}"});
    holds_for([&] { return f.recorder->count("server:web") == 1; }, 1500ms, "web not to run again");
  }
  runner.stop();
}

TEST_CASE("a dependent that is materializing when its dependency becomes ready runs again", "[dependency]") {
  Fixture f;
  auto gate = std::make_shared<Gate>();
  f.bucket.provide(gate);
  f.bucket.register_kind<Asset>("asset", fast_kind());
  f.bucket.register_kind<Watcher>("watcher", patient_kind());
  Runner runner(f.bucket);

  f.bucket.notify(Watcher{.name = "w", .asset = "logo.png"});
  wait_until([&] { return gate->arrived() == 1; }, 10s, "w's first run to start");
  f.bucket.notify(Asset{.path = "logo.png", .content = "png"});
  wait_until([&] { return f.converged("asset", "logo.png"); }, 10s, "logo.png to become ready", f.describe());
  gate->open();  // w returns done() having seen "not ready"

  wait_until(
      [&] {
        auto runs = f.recorder->entries("watcher:w");
        return runs.size() >= 2 && runs.back().value == "ready" && f.converged("watcher", "w");
      },
      10s, "w to run again and see logo.png ready", f.describe());
  CHECK(f.recorder->entries("watcher:w").front().value == "not ready");
  runner.stop();
}

TEST_CASE("removing a matter that others depend on is refused", "[dependency]") {
  Fixture f;
  f.bucket.register_kind<Asset>("asset", fast_kind());
  f.bucket.register_kind<Server>("server", fast_kind());
  f.bucket.notify(Asset{.path = "index.html", .content = "x"});
  f.bucket.notify(Server{.name = "web", .assets = {"index.html"}});

  try {
    f.bucket.remove<Asset>("index.html");
    FAIL("remove of a depended-on matter returned");
  } catch (const dmm::DependencyError& e) {
    const std::string what = e.what();
    CHECK(what.find("cannot remove asset 'index.html'") != std::string::npos);
    CHECK(what.find("server 'web'") != std::string::npos);
  }
  CHECK(query_matter(f.name, "asset", "index.html").has_value());

  // dmmctl's bulk removal refuses the same way.
  dmm::InspectQuery q{.postgres = servers().postgres, .bucket = f.name, .kind = "asset"};
  CHECK_THROWS_AS(dmm::remove_matters(q, true), dmm::DependencyError);
  CHECK(query_matter(f.name, "asset", "index.html").has_value());

  // Once the dependent no longer depends on it (or is gone), removal works.
  f.bucket.notify(Server{.name = "web", .assets = {}});
  CHECK(f.bucket.remove<Asset>("index.html"));
  CHECK_FALSE(query_matter(f.name, "asset", "index.html").has_value());

  f.bucket.notify(Asset{.path = "a.css", .content = "x"});
  f.bucket.notify(Server{.name = "web", .assets = {"a.css"}});
  CHECK(f.bucket.remove<Server>("web"));
  CHECK(f.bucket.remove<Asset>("a.css"));
  CHECK(count_matters(f.name) == 0);
  pqxx::nontransaction tx(pg());
  CHECK(tx.exec_params("SELECT count(*) FROM dmm.dependency WHERE bucket = $1", f.name)[0][0].as<int>() == 0);
}

TEST_CASE("a dependency cycle is refused and nothing of the notify is stored", "[dependency]") {
  Fixture f;
  f.bucket.register_kind<Node>("node", fast_kind());
  f.bucket.notify(Node{.id = "a", .needs = {"b"}});
  f.bucket.notify(Node{.id = "b", .needs = {"c"}});

  try {
    f.bucket.notify(Node{.id = "c", .needs = {"a"}});
    FAIL("a notify closing a cycle returned");
  } catch (const dmm::DependencyError& e) {
    const std::string what = e.what();
    INFO(what);
    CHECK(what.find("dependency cycle node 'c' -> node 'a' -> node 'b' -> node 'c'") != std::string::npos);
  }
  CHECK_FALSE(query_matter(f.name, "node", "c").has_value());

  CHECK_THROWS_AS(f.bucket.notify(Node{.id = "self", .needs = {"self"}}), dmm::DependencyError);
  CHECK_FALSE(query_matter(f.name, "node", "self").has_value());

  // An existing matter that would close a cycle keeps its state and edges.
  CHECK_THROWS_AS(f.bucket.notify(Node{.id = "b", .needs = {"a"}}), dmm::DependencyError);
  CHECK(f.bucket.get<Node>("b")->needs == std::vector<std::string>{"c"});
  CHECK_THROWS_AS(f.bucket.update<Node>("b", [](Node& n) { n.needs = {"a"}; }), dmm::DependencyError);
  CHECK(f.bucket.get<Node>("b")->needs == std::vector<std::string>{"c"});

  // A bad dependency name is an InvalidArgument naming the matter.
  try {
    f.bucket.notify(Node{.id = "d", .needs = {""}});
    FAIL("a notify with an empty dependency identity returned");
  } catch (const dmm::InvalidArgument& e) {
    CHECK(std::string(e.what()).find("kind 'node' identity 'd': invalid dependency") != std::string::npos);
  }
  CHECK_FALSE(query_matter(f.name, "node", "d").has_value());
}
