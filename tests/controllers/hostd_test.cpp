// hostd as users run it: a child process applying a site file, killed with
// SIGKILL or stopped cleanly and started again. The new hostd adopts the
// managed processes (same pids, nothing started twice) and repairs what
// changed while it was down; a rollout killed mid-way is resumed, its
// completed steps not run again.
#include <catch2/catch.hpp>

#include "serving.hpp"

using namespace ctl_test;
using dmm::controllers::processes::alive;
using dmm_test::wait_until;

namespace {

std::string hostd_binary() {
  const char* path = std::getenv("DMM_TEST_HOSTD");
  if (!path || !*path) FAIL("DMM_TEST_HOSTD is not set: run the controller tests through ctest, or set it to the hostd binary");
  return path;
}

std::vector<std::string> common_args(const std::string& bucket) {
  return {"--postgres", dmm_test::servers().postgres, "--nats", dmm_test::servers().nats, "--bucket", bucket};
}

// `hostd run` with its output in `log` (a pipe nobody reads could fill up).
std::unique_ptr<dmm_test::Process> start_hostd(const std::string& bucket, const fs::path& state_dir,
                                               const std::string& log) {
  std::string cmd = "exec '" + hostd_binary() + "'";
  for (const auto& a : common_args(bucket)) cmd += " '" + a + "'";
  cmd += " run --state-dir '" + state_dir.string() + "' >>'" + log + "' 2>&1";
  return std::make_unique<dmm_test::Process>("/bin/sh", std::vector<std::string>{"-c", cmd});
}

// A hostd subcommand to completion; its exit status.
int hostd(const std::string& bucket, std::vector<std::string> args) {
  auto argv = common_args(bucket);
  argv.insert(argv.end(), args.begin(), args.end());
  dmm_test::Process p(hostd_binary(), argv);
  auto status = p.wait(60'000ms);
  REQUIRE(status);
  return *status;
}

std::size_t count_lines(const std::string& path) {
  auto text = read_file(path);
  return static_cast<std::size_t>(std::count(text.begin(), text.end(), '\n'));
}

std::size_t count(const std::string& text, const std::string& part) {
  std::size_t n = 0;
  for (auto at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++n;
  return n;
}

// A site file declaring one rollout, `spec`, as a user writes it.
void write_rollout_site(const std::string& path, const RolloutSpec& spec) {
  auto entry = nlohmann::json(spec);
  entry.erase("site");
  write_file(path, nlohmann::json{{"site", "rollouts"}, {"rollouts", {entry}}}.dump(2));
}

}  // namespace

TEST_CASE("hostd applies a site, and a restarted hostd adopts its processes instead of starting them again",
          "[hostd]") {
  TempDir dir;
  const fs::path state = dir.path() / "state";
  ProcessKiller killer{state};
  const auto bucket = dmm_test::unique_name("hostd");
  const int port = dmm_test::closed_port();
  const auto starts = dir / "starts", log = dir / "hostd.log";
  const auto site = dir / "site.json";
  auto write_site = [&](const std::string& title) {
    write_file(site, nlohmann::json{
                         {"files", {{{"path", "www/index.html"}, {"content", "<h1>" + title + "</h1>\n"}}}},
                         {"processes",
                          {{{"name", "web"},
                            {"command", "python3"},
                            {"args", {"-m", "http.server", std::to_string(port), "--bind", "127.0.0.1"}},
                            {"cwd", "www"},
                            {"depends_on", {"www/index.html"}}},
                           {{"name", "counter"}, {"command", "sh"}, {"args", {"-c", "echo start >> " + starts + "; exec sleep 600"}}}}}}
                         .dump(2));
  };
  write_site("v1");
  // Watch the stored state through a bucket of our own (no workers in it).
  auto view = dmm_test::open_bucket(bucket);
  view.register_kind<FileMatter>("file");
  view.register_kind<ProcessMatter>("process");
  auto pid_of = [&](const std::string& name) {
    auto p = view.get<ProcessMatter>(name);
    return p && p->status.phase == "running" && alive(p->status) ? p->status.pid : 0;
  };
  auto converged = [&] { return dmm_test::count_converged(bucket, "") == 3; };
  auto explain = [&] { return dmm_test::describe_unconverged(bucket) + "\nhostd log:\n" + read_file(log); };

  auto daemon = start_hostd(bucket, state, log);
  REQUIRE(hostd(bucket, {"apply", site}) == 0);
  wait_until([&] { return get_page(port, "/index.html") == "<h1>v1</h1>\n" && pid_of("counter") && converged(); },
             30'000ms, "the site to be served", explain);
  const int web = pid_of("web"), counter = pid_of("counter");

  SECTION("kill -9 of hostd: the new one adopts both processes") {
    daemon->kill(SIGKILL);
    REQUIRE(daemon->wait(5000ms));
    daemon = start_hostd(bucket, state, log);
    wait_until(converged, 20'000ms, "everything to converge after the restart", explain);
    dmm_test::holds_for([&] { return pid_of("web") == web && pid_of("counter") == counter; }, 3000ms,
                        "the managed processes to keep their pids");
    CHECK(count_lines(starts) == 1);
  }

  SECTION("a clean stop, drift while hostd is down, then a new hostd repairs only what changed") {
    daemon->kill(SIGTERM);
    REQUIRE(daemon->wait(20'000ms) == 0);
    REQUIRE(alive(view.get<ProcessMatter>("web")->status));
    fs::remove(dir / "www/index.html");
    ::kill(counter, SIGKILL);
    daemon = start_hostd(bucket, state, log);
    wait_until([&] { return read_file(dir / "www/index.html") == "<h1>v1</h1>\n"; }, 10'000ms,
               "the deleted file to come back", explain);
    wait_until([&] { return pid_of("counter") != 0 && pid_of("counter") != counter && converged(); }, 20'000ms,
               "the killed process to be restarted", explain);
    CHECK(pid_of("web") == web);
    CHECK(count_lines(starts) == 2);
  }

  SECTION("edit the site and apply again: the file converges, the server keeps running; delete removes all") {
    write_site("v2");
    REQUIRE(hostd(bucket, {"apply", site}) == 0);
    wait_until([&] { return get_page(port, "/index.html") == "<h1>v2</h1>\n"; }, 10'000ms, "the new page", explain);
    CHECK(pid_of("web") == web);
    REQUIRE(hostd(bucket, {"delete", site}) == 0);
    wait_until([&] { return dmm_test::count_matters(bucket) == 0; }, 30'000ms, "the site to be deleted", explain);
    CHECK(!fs::exists(dir / "www/index.html"));
    wait_until([&] { return ::kill(web, 0) != 0 && ::kill(counter, 0) != 0; }, 5000ms, "the processes to be stopped");
  }
}

TEST_CASE("hostd resumes a rollout after a SIGKILL in its middle: no completed step runs again, and the old version "
          "serves throughout",
          "[hostd][rollouts]") {
  TempDir dir;
  const fs::path state = dir.path() / "state";
  ProcessKiller killer{state};
  const auto bucket = dmm_test::unique_name("hostd");
  const auto [p1, p2] = two_ports();
  const auto log = dir / "hostd.log", site = dir / "site.json", go = dir / "go";
  auto view = dmm_test::open_bucket(bucket);
  view.register_kind<RolloutMatter>("rollout");
  auto explain = [&] { return dmm_test::describe_unconverged(bucket) + "\nhostd log:\n" + read_file(log); };
  auto serving = [&](const std::string& version) {
    auto r = view.get<RolloutMatter>("web");
    return r && r->status.serving.version == version && r->progress.phase == "done" && alive(r->status.serving.process);
  };

  auto daemon = start_hostd(bucket, state, log);
  write_rollout_site(site, web_version(dir, "v1", p1));
  REQUIRE(hostd(bucket, {"apply", site}) == 0);
  wait_until([&] { return serving("v1"); }, 20'000ms, "version v1 to serve", explain);

  // v2 is healthy once the file `go` exists: until then its rollout waits in health-check.
  auto v2 = web_version(dir, "v2", p2);
  v2.health = {.command = {"test", "-f", go}, .interval_ms = 100, .attempts = 0};
  write_rollout_site(site, v2);
  ServingWatch either([&, p1 = p1, p2 = p2] { return get_page(p1) == "v1\n" || get_page(p2) == "v2\n"; });
  REQUIRE(hostd(bucket, {"apply", site}) == 0);
  wait_until(
      [&] {
        auto r = view.get<RolloutMatter>("web");
        return r && r->progress.steps.size() == 4 && r->progress.steps[2].attempts >= 2 &&
               alive(r->status.next.process) && get_page(p2) == "v2\n";
      },
      20'000ms, "the rollout to wait in its health check, the new version serving", explain);
  {
    auto argv = common_args(bucket);
    argv.push_back("status");
    dmm_test::Process status(hostd_binary(), argv);
    CHECK_THAT(status.expect_line_containing("health-check", 10'000ms),
               Catch::Contains("failed): health command 'test' exited with code 1"));
  }

  daemon->kill(SIGKILL);
  REQUIRE(daemon->wait(5000ms));
  CHECK(get_page(p2) == "v2\n");  // the new version outlives hostd, beside the old one
  daemon = start_hostd(bucket, state, log);
  write_file(go, "");
  wait_until([&] { return serving("v2"); }, 20'000ms, "version v2 to serve after the restart", explain);
  either.stop();
  CHECK(either.missed() == 0);
  CHECK(either.polls() > 5);

  wait_until([&] { return all_gone(pids_of(dir, "v1")); }, 5000ms, "version v1 to be stopped");
  CHECK(pids_of(dir, "v2").size() == 1);  // started once, adopted by nobody else
  CHECK(read_file(dir / "web.conf") == "version=v2\n");
  const auto text = read_file(log);
  CHECK(count(text, "version v2: wrote") == 1);
  CHECK(count(text, "version v2: started pid") == 1);
  CHECK(count(text, "version v2: healthy") == 1);

  REQUIRE(hostd(bucket, {"delete", site}) == 0);
  wait_until([&] { return dmm_test::count_matters(bucket) == 0; }, 20'000ms, "the site to be deleted", explain);
  wait_until([&] { return all_gone(pids_of(dir, "v2")); }, 5000ms, "version v2 to be stopped");
  CHECK(!fs::exists(dir / "web.conf"));
}

TEST_CASE("hostd apply rejects a rollout it cannot run, naming the field", "[hostd][rollouts]") {
  TempDir dir;
  const auto bucket = dmm_test::unique_name("hostd");
  const auto site = dir / "site.json";
  auto expect_error = [&](const nlohmann::json& rollout, const std::string& part) {
    write_file(site, nlohmann::json{{"rollouts", {rollout}}}.dump());
    auto argv = common_args(bucket);
    argv.insert(argv.end(), {"apply", site});
    dmm_test::Process apply(hostd_binary(), argv);
    CHECK_THAT(apply.expect_line_containing("rollouts[0]", 10'000ms), Catch::Contains(part));
    CHECK(apply.wait(10'000ms) == 1);
  };
  const nlohmann::json ok = {{"name", "web"}, {"version", "v1"}, {"command", "true"},
                             {"health", {{"url", "http://127.0.0.1:1/"}}}};
  auto without = [&](const std::string& key) {
    auto j = ok;
    j.erase(key);
    return j;
  };
  auto with = [&](const std::string& key, const nlohmann::json& value) {
    auto j = ok;
    j[key] = value;
    return j;
  };
  expect_error(without("version"), "version is required");
  expect_error(with("port", 8080), "unknown field 'port'");
  expect_error(with("health", {{"url", "http://127.0.0.1:1/"}, {"retries", 3}}), "health: unknown field 'retries'");
  expect_error(with("health", nlohmann::json::object()), "health: set either url or command");
}
