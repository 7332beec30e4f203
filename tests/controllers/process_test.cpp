// The process controller on real processes: started with its output in its
// log, restarted after a crash (with backoff), policies honoured, stopped by
// finalize (SIGTERM, then SIGKILL), adopted instead of started twice, and
// held back until the files it depends on are ready.
#include <catch2/catch.hpp>

#include "host.hpp"

using namespace ctl_test;
using dmm::controllers::files::FileSpec;
using dmm::controllers::processes::alive;
using dmm::controllers::processes::Need;
using dmm::controllers::processes::ProcessSpec;
using dmm_test::wait_until;

namespace {

ProcessMatter shell(const std::string& name, const std::string& script, const std::string& restart = "always") {
  return ProcessMatter{.spec = ProcessSpec{.name = name, .command = "sh", .args = {"-c", script}, .restart = restart}};
}

// Waits until the process matter runs a live process; returns its status.
dmm::controllers::processes::ProcessStatus wait_running(Host& host, const std::string& name, int not_pid = 0) {
  dmm::controllers::processes::ProcessStatus s;
  wait_until(
      [&] {
        auto p = host.process(name);
        if (!p || p->status.phase != "running" || p->status.pid == not_pid || !alive(p->status)) return false;
        s = p->status;
        return true;
      },
      10'000ms, "process '" + name + "' to run",
      [&] { return dmm_test::describe_unconverged(host.name()); });
  return s;
}

std::size_t count_lines(const std::string& path) {
  auto text = read_file(path);
  return static_cast<std::size_t>(std::count(text.begin(), text.end(), '\n'));
}

}  // namespace

TEST_CASE("a process is started in its own session with its output in its log", "[processes]") {
  TempDir dir;
  ProcessKiller killer{dir.path() / "state"};
  Host host(dmm_test::unique_name("procs"), dir.path() / "state");
  auto p = shell("greeter", "echo hello from $GREETING; exec sleep 600");
  p.spec.env = {{"GREETING", "dmm"}};
  host.bucket().notify(p);
  const auto s = wait_running(host, "greeter");
  CHECK(s.pgid != ::getpgrp());  // not in the test's process group: survives its host
  CHECK(::getsid(s.pid) == s.pgid);
  wait_until([&] { return read_file(host.supervisor().log_path("greeter")).find("hello from dmm") != std::string::npos; },
             5000ms, "the output in the process's log");
}

TEST_CASE("a crashed process is restarted, and a crash loop backs off", "[processes]") {
  TempDir dir;
  ProcessKiller killer{dir.path() / "state"};
  Host host(dmm_test::unique_name("procs"), dir.path() / "state");
  host.bucket().notify(shell("server", "exec sleep 600"));
  const auto first = wait_running(host, "server");
  ::kill(first.pid, SIGKILL);
  const auto second = wait_running(host, "server", first.pid);
  CHECK(second.restarts == 1);
  auto p = host.process("server");
  REQUIRE(p);

  SECTION("a process that keeps failing is restarted with growing delays") {
    const auto starts = dir / "starts";
    host.bucket().notify(shell("crasher", "echo start >> " + starts + "; exit 3"));
    wait_until([&] { return count_lines(starts) >= 4; }, 10'000ms, "four starts of a crashing process");
    auto c = host.process("crasher");
    REQUIRE(c);
    CHECK(c->status.exit_code == 3);
    CHECK(c->status.crash_streak >= 3);
    // With a 50 ms initial backoff doubling per crash, 1 s gives at most a handful of starts.
    const auto before = count_lines(starts);
    std::this_thread::sleep_for(1000ms);  // measuring a rate, not synchronizing
    CHECK(count_lines(starts) - before <= 6);
  }
}

TEST_CASE("restart policies: on-failure leaves a clean exit alone, never leaves any exit alone", "[processes]") {
  TempDir dir;
  ProcessKiller killer{dir.path() / "state"};
  Host host(dmm_test::unique_name("procs"), dir.path() / "state");
  host.bucket().notify(shell("job", "exit 0", "on-failure"));
  host.bucket().notify(shell("once", "exit 5", "never"));
  for (const char* name : {"job", "once"})
    wait_until(
        [&] {
          auto p = host.process(name);
          return p && p->status.phase == "exited" && host.phase("process", name) == "ready";
        },
        10'000ms, std::string("'") + name + "' to exit and stay exited");
  dmm_test::holds_for([&] { return host.process("job")->status.restarts == 0 && host.process("once")->status.restarts == 0; },
                      1000ms, "no restarts");
  CHECK(host.process("job")->status.exit_code == 0);
  CHECK(host.process("once")->status.exit_code == 5);
}

TEST_CASE("finalize stops a process: SIGTERM, then SIGKILL for one that ignores it", "[processes]") {
  TempDir dir;
  ProcessKiller killer{dir.path() / "state"};
  Host host(dmm_test::unique_name("procs"), dir.path() / "state");
  host.bucket().notify(shell("polite", "exec sleep 600"));
  auto stubborn = shell("stubborn", "trap '' TERM; echo ready; while :; do sleep 0.05; done");
  stubborn.spec.stop_grace_ms = 500;
  host.bucket().notify(stubborn);
  const auto polite = wait_running(host, "polite");
  const auto hard = wait_running(host, "stubborn");
  wait_until([&] { return read_file(host.supervisor().log_path("stubborn")).find("ready") != std::string::npos; },
             5000ms, "the stubborn process to have set its trap");

  const auto t0 = dmm_test::Clock::now();
  REQUIRE(host.bucket().remove<ProcessMatter>("polite"));
  wait_until([&] { return !alive(polite) && host.phase("process", "polite") == "(absent)"; }, 5000ms,
             "the polite process to stop on SIGTERM");
  CHECK(dmm_test::Clock::now() - t0 < 3000ms);

  const auto t1 = dmm_test::Clock::now();
  REQUIRE(host.bucket().remove<ProcessMatter>("stubborn"));
  wait_until([&] { return !alive(hard) && host.phase("process", "stubborn") == "(absent)"; }, 10'000ms,
             "the stubborn process to be killed after its grace");
  CHECK(dmm_test::Clock::now() - t1 >= 500ms);
  // Its whole group is gone (once init has reaped it), and it was not restarted.
  wait_until([&] { return ::kill(-hard.pgid, 0) != 0; }, 2000ms, "the stubborn process's group to be gone");
  dmm_test::holds_for([&] { return !host.process("stubborn"); }, 500ms, "the removed process to stay removed");
}

TEST_CASE("a live process is adopted, not started twice: after a clean stop and from its pid file", "[processes]") {
  TempDir dir;
  ProcessKiller killer{dir.path() / "state"};
  const auto bucket = dmm_test::unique_name("procs");
  const auto starts = dir / "starts";
  dmm::controllers::processes::ProcessStatus first;
  {
    Host host(bucket, dir.path() / "state");
    host.bucket().notify(shell("server", "echo start >> " + starts + "; exec sleep 600"));
    first = wait_running(host, "server");
  }  // a clean stop: the process keeps running
  REQUIRE(alive(first));

  Host host(bucket, dir.path() / "state");
  // The stored state forgets the process (as when a host dies between start
  // and write-back): materialize finds it through its pid file.
  host.bucket().update<ProcessMatter>("server", [](ProcessMatter& p) { p.status = {}; });
  wait_until([&] {
    auto p = host.process("server");
    return p && p->status.pid == first.pid && host.phase("process", "server") == "ready";
  }, 10'000ms, "the running process to be adopted");
  CHECK(count_lines(starts) == 1);
  CHECK(alive(first));
}

TEST_CASE("a process waits for the files it depends on", "[processes][dependency]") {
  TempDir dir;
  ProcessKiller killer{dir.path() / "state"};
  Host host(dmm_test::unique_name("procs"), dir.path() / "state");
  const auto source = dir / "src/index.html", page = dir / "www/index.html";
  // The file cannot be materialized yet: its source is missing.
  host.bucket().notify(FileMatter{.spec = FileSpec{.path = page, .source = source}});
  auto server = shell("web", "cat index.html; exec sleep 600");
  server.spec.cwd = dir / "www";
  server.spec.depends_on = {Need{.kind = "file", .identity = page}};
  host.bucket().notify(server);
  dmm_test::holds_for([&] { auto p = host.process("web"); return p && p->status.phase == "stopped"; }, 1000ms,
                      "the server to wait for its file");
  auto row = dmm_test::query_matter(host.name(), "process", "web");
  REQUIRE(row);
  CHECK(row->last_error.find("waiting for file") != std::string::npos);

  fs::create_directories(dir.path() / "src");
  write_file(source, "<h1>ready</h1>\n");
  // Converges through retry with backoff (50 ms .. 1 s here), or at once
  // when dependents are woken.
  wait_running(host, "web");
  wait_until([&] { return read_file(host.supervisor().log_path("web")).find("<h1>ready</h1>") != std::string::npos; },
             5000ms, "the server to have seen its file");
}
