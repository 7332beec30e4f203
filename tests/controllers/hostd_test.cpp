// hostd as users run it: a child process applying a site file, killed with
// SIGKILL or stopped cleanly and started again. The new hostd adopts the
// managed processes (same pids, nothing started twice) and repairs what
// changed while it was down.
#include <httplib.h>

#include <catch2/catch.hpp>

#include "host.hpp"

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

std::string get_page(int port, const std::string& path) {
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(1, 0);
  auto res = client.Get(path.c_str());
  return res && res->status == 200 ? res->body : "";
}

std::size_t count_lines(const std::string& path) {
  auto text = read_file(path);
  return static_cast<std::size_t>(std::count(text.begin(), text.end(), '\n'));
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
