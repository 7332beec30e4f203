// The rollout controller on real processes (python3's http.server): a new
// version starts beside the old one and replaces it once healthy; one whose
// health check fails is rolled back, and the old version answers every poll
// during the rollout, also when it fails.
#include <catch2/catch.hpp>

#include "serving.hpp"

using namespace ctl_test;
using dmm::controllers::processes::alive;
using dmm::controllers::rollouts::Version;
using dmm_test::wait_until;

namespace {

// Waits until version `version` of "web" serves and its rollout is done.
Version wait_serving(Host& host, const std::string& version) {
  Version serving;
  wait_until(
      [&] {
        auto r = host.rollout("web");
        if (!r || r->status.serving.version != version || r->progress.phase != "done") return false;
        serving = r->status.serving;
        return alive(serving.process) && host.phase("rollout", "web") == "ready";
      },
      20'000ms, "version " + version + " of 'web' to serve",
      [&] { return dmm_test::describe_unconverged(host.name()); });
  return serving;
}

void set_spec(Host& host, const RolloutSpec& spec) {
  // update, not notify: the stored status names the serving version (as hostd apply does).
  REQUIRE(host.bucket().update<RolloutMatter>("web", [&](RolloutMatter& r) { r.spec = spec; }));
}

std::vector<std::string> step_statuses(const RolloutMatter& r) {
  std::vector<std::string> out;
  for (const auto& s : r.progress.steps) out.push_back(s.name + " " + s.status);
  return out;
}

}  // namespace

TEST_CASE("a rollout starts the new version beside the old one and stops the old one once the new one is healthy",
          "[rollouts]") {
  TempDir dir;
  ProcessKiller killer{dir.path() / "state"};
  Host host(dmm_test::unique_name("rollouts"), dir.path() / "state");
  const auto [p1, p2] = two_ports();
  host.bucket().notify(RolloutMatter{.spec = web_version(dir, "v1", p1)});
  const auto v1 = wait_serving(host, "v1");
  CHECK(get_page(p1) == "v1\n");
  CHECK(read_file(dir / "web.conf") == "version=v1\n");

  ServingWatch either([&, p1 = p1, p2 = p2] { return get_page(p1) == "v1\n" || get_page(p2) == "v2\n"; });
  set_spec(host, web_version(dir, "v2", p2));
  const auto v2 = wait_serving(host, "v2");
  either.stop();
  CHECK(either.missed() == 0);
  CHECK(either.polls() > 5);

  CHECK(get_page(p2) == "v2\n");
  CHECK(read_file(dir / "web.conf") == "version=v2\n");
  CHECK(v2.config.content == "version=v2\n");
  wait_until([&] { return !alive(v1.process) && all_gone(pids_of(dir, "v1")); }, 5000ms, "version v1 to be stopped");
  CHECK(alive(v2.process));
  CHECK(pids_of(dir, "v2").size() == 1);  // started once
  const auto r = host.rollout("web");
  REQUIRE(r);
  CHECK(r->status.next.version.empty());
  CHECK(step_statuses(*r) ==
        std::vector<std::string>{"write-config done", "start-new done", "health-check done", "stop-old done"});

  SECTION("removing the rollout stops its version and deletes its configuration") {
    REQUIRE(host.bucket().remove<RolloutMatter>("web"));
    wait_until([&] { return host.phase("rollout", "web") == "(absent)"; }, 10'000ms, "the rollout to be removed");
    CHECK(all_gone(pids_of(dir, "v2")));
    CHECK(!fs::exists(dir / "web.conf"));
  }
}

TEST_CASE("a rollout whose health check fails is rolled back, and the old version serves throughout", "[rollouts]") {
  TempDir dir;
  ProcessKiller killer{dir.path() / "state"};
  Host host(dmm_test::unique_name("rollouts"), dir.path() / "state");
  const auto [p1, p2] = two_ports();
  host.bucket().notify(RolloutMatter{.spec = web_version(dir, "v1", p1)});
  const auto v1 = wait_serving(host, "v1");

  ServingWatch old([&, p1 = p1] { return get_page(p1) == "v1\n"; });
  auto bad = web_version(dir, "v2", p2, "/healthz");  // http.server answers 404: never healthy
  bad.health.attempts = 30;  // 3 s: time for http.server to start and answer 404
  set_spec(host, bad);
  wait_until(
      [&] {
        auto r = host.rollout("web");
        return r && r->progress.phase == "rolled back" && host.phase("rollout", "web") == "failed";
      },
      20'000ms, "the failed rollout to be rolled back", [&] { return dmm_test::describe_unconverged(host.name()); });
  old.stop();
  CHECK(old.missed() == 0);
  CHECK(old.polls() > 5);

  // The new version ran, and was stopped; the configuration is v1's again.
  CHECK(pids_of(dir, "v2").size() == 1);
  wait_until([&] { return all_gone(pids_of(dir, "v2")); }, 5000ms, "version v2 to be stopped");
  CHECK(get_page(p2).empty());
  CHECK(read_file(dir / "web.conf") == "version=v1\n");
  auto r = host.rollout("web");
  REQUIRE(r);
  CHECK(r->status.serving.process.pid == v1.process.pid);
  CHECK(alive(v1.process));
  CHECK(r->status.next.version.empty());
  CHECK(step_statuses(*r) == std::vector<std::string>{"write-config rolled back", "start-new rolled back",
                                                      "health-check failed", "stop-old pending"});
  CHECK(r->progress.steps[2].attempts == 30);
  const auto row = dmm_test::query_matter(host.name(), "rollout", "web");
  REQUIRE(row);
  CHECK_THAT(row->last_error, Catch::Contains("step 'health-check' failed 30 times") &&
                                  Catch::Contains("answered 404") && Catch::Contains("rolled back"));

  SECTION("a fixed version rolls out from the old one") {
    set_spec(host, web_version(dir, "v3", p2));
    wait_serving(host, "v3");
    CHECK(get_page(p2) == "v3\n");
    CHECK(read_file(dir / "web.conf") == "version=v3\n");
    wait_until([&] { return all_gone(pids_of(dir, "v1")); }, 5000ms, "version v1 to be stopped");
  }
}

TEST_CASE("a new version that exits before it is healthy is rolled back at once", "[rollouts]") {
  TempDir dir;
  ProcessKiller killer{dir.path() / "state"};
  Host host(dmm_test::unique_name("rollouts"), dir.path() / "state");
  const auto [p1, p2] = two_ports();
  host.bucket().notify(RolloutMatter{.spec = web_version(dir, "v1", p1)});
  wait_serving(host, "v1");
  // The old version's port: http.server cannot bind it and exits (and v1 answers 404 to /healthz).
  auto clash = web_version(dir, "v2", p1, "/healthz");
  clash.health.attempts = 0;                // never give up probing: only the exit ends it
  set_spec(host, clash);
  wait_until([&] { return host.phase("rollout", "web") == "failed"; }, 20'000ms, "the rollout to fail",
             [&] { return dmm_test::describe_unconverged(host.name()); });
  const auto row = dmm_test::query_matter(host.name(), "rollout", "web");
  REQUIRE(row);
  CHECK_THAT(row->last_error, Catch::Contains("exited with code") && Catch::Contains("before it was healthy"));
  CHECK(get_page(p1) == "v1\n");
  CHECK(host.rollout("web")->status.serving.version == "v1");
}

TEST_CASE("a new version notified mid-rollout starts the list over, and the abandoned version is stopped",
          "[rollouts]") {
  TempDir dir;
  ProcessKiller killer{dir.path() / "state"};
  Host host(dmm_test::unique_name("rollouts"), dir.path() / "state");
  const auto [p1, p2] = two_ports();
  host.bucket().notify(RolloutMatter{.spec = web_version(dir, "v1", p1)});
  const auto v1 = wait_serving(host, "v1");

  auto stuck = web_version(dir, "v2", p2, "/healthz");  // never healthy, never gives up
  stuck.health.attempts = 0;
  set_spec(host, stuck);
  wait_until([&, p2 = p2] { return get_page(p2) == "v2\n" && host.rollout("web")->progress.steps[2].attempts >= 2; },
             20'000ms, "v2 to run, waiting in its health check");
  ServingWatch old([&, p1 = p1] { return get_page(p1) == "v1\n"; });
  const int p3 = dmm_test::closed_port();
  set_spec(host, web_version(dir, "v3", p3));
  wait_until([&] { return all_gone(pids_of(dir, "v2")); }, 20'000ms, "the abandoned v2 to be stopped",
             [&] { return dmm_test::describe_unconverged(host.name()); });
  CHECK(alive(v1.process));  // stopped by v3's stop-old only, after v2 is gone
  old.stop();
  CHECK(old.missed() == 0);
  wait_serving(host, "v3");
  CHECK(get_page(p3) == "v3\n");
  CHECK(read_file(dir / "web.conf") == "version=v3\n");
  wait_until([&] { return all_gone(pids_of(dir, "v1")); }, 5000ms, "version v1 to be stopped");
}
