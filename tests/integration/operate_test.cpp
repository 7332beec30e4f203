// Operating a bucket: dmmctl's commands, the attempt history, /metrics,
// /healthz, /readyz and the web view (in headless Chromium), on real servers
// with matters in every phase.
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <random>
#include <cstdlib>
#include <filesystem>
#include <httplib.h>

#include "harness.hpp"

extern char** environ;

namespace {

using namespace dmm_test;
using nlohmann::json;

// Behaviour by `mode`: ok, fail (retry with a long backoff), terminal, slow
// (holds its lease until stopped).
struct Op {
  std::string id;
  std::string mode = "ok";
  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context& ctx) {
    if (mode == "fail") throw std::runtime_error("boom: " + id + " is unreachable");
    if (mode == "terminal") throw dmm::TerminalError("bad config for " + id);
    if (mode == "slow") {
      while (!ctx.stop_requested()) std::this_thread::sleep_for(20ms);
      throw std::runtime_error("stopped");
    }
    return dmm::Result::done();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Op, id, mode)

// Never worked in these tests: its matters stay pending, or deleting once removed.
struct Idle {
  std::string id;
  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context&) { return dmm::Result::done(); }
  void finalize(dmm::Context&) {}
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Idle, id)

// Arbitrary UTF-8 with HTML specials: the web view must escape it.
const std::string kOddIdentity = "ready <b>&\"ü'";

struct Ran {
  int status = -1;
  std::string out;  // stdout and stderr
};

// Runs `binary args...` to completion, capturing its output.
Ran run(const std::string& binary, const std::vector<std::string>& args) {
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
  posix_spawn_file_actions_adddup2(&actions, fds[1], 2);
  posix_spawn_file_actions_addclose(&actions, fds[0]);
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(binary.c_str()));
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, binary.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  REQUIRE(rc == 0);
  Ran ran;
  char buf[4096];
  for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) > 0;) ran.out.append(buf, static_cast<std::size_t>(n));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  ran.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return ran;
}

std::string env_or_fail(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) FAIL(name << " is not set: run the tests through ctest (it passes the path of the build's tools)");
  return v;
}

// A bucket with one matter in every phase: op matters worked by this process
// (ready, reconciling, retrying, failed) and idle ones nobody works (pending,
// deleting).
class Scene {
 public:
  Scene()
      : name_(unique_name("op")),
        bucket_(open_bucket(name_)),
        ops_(bucket_.register_kind<Op>("op", kind_options())),
        idle_(bucket_.register_kind<Idle>("idle", fast_kind())) {
    (void)idle_;
  }
  ~Scene() { stop(); }

  void start() {
    worker_ = std::thread([this] { ops_.work(); });
    bucket_.notify(Op{"ok-1"});
    bucket_.notify(Op{kOddIdentity});
    bucket_.notify(Op{"slow-1", "slow"});
    bucket_.notify(Op{"fail-1", "fail"});
    bucket_.notify(Op{"terminal-1", "terminal"});
    bucket_.notify(Idle{"waiting-1"});
    bucket_.notify(Idle{"removed-1"});
    REQUIRE(bucket_.remove<Idle>("removed-1"));
    auto phases_reached = [&] {
      return query_phase(name_, "op", "ok-1") == "ready" && query_phase(name_, "op", kOddIdentity) == "ready" &&
             query_phase(name_, "op", "slow-1") == "reconciling" && query_phase(name_, "op", "fail-1") == "retrying" &&
             query_phase(name_, "op", "terminal-1") == "failed" && query_phase(name_, "idle", "waiting-1") == "pending" &&
             query_phase(name_, "idle", "removed-1") == "deleting";
    };
    wait_until(phases_reached, 20s, "one matter in every phase", [&] { return describe_unconverged(name_, 20); });
  }

  void stop() {
    ops_.stop();
    if (worker_.joinable()) worker_.join();
  }

  // dmmctl with this bucket's settings; `args` first so commands read naturally.
  Ran ctl(std::vector<std::string> args) {
    for (std::string a : {"--postgres", servers().postgres.c_str(), "--nats", servers().nats.c_str(), "--bucket",
                          name_.c_str()})
      args.push_back(a);
    return run(env_or_fail("DMM_TEST_DMMCTL"), args);
  }

  const std::string& name() const { return name_; }
  dmm::Bucket& bucket() { return bucket_; }

 private:
  static dmm::KindOptions kind_options() {
    auto o = fast_kind(8);
    o.backoff = {.initial = 60s, .max = 60s, .multiplier = 2.0, .jitter = 0.0};  // fail-1 stays retrying
    return o;
  }

  std::string name_;
  dmm::Bucket bucket_;
  dmm::WorkStream& ops_;
  dmm::WorkStream& idle_;
  std::thread worker_;
};

json parse_json(const Ran& ran) {
  INFO(ran.out);
  REQUIRE(ran.status == 0);
  return json::parse(ran.out);
}

}  // namespace

TEST_CASE("dmmctl list, describe, why and stats show matters in every phase", "[operate]") {
  Scene scene;
  scene.start();

  auto list = scene.ctl({"list"});
  INFO(list.out);
  REQUIRE(list.status == 0);
  CHECK(list.out.rfind("KIND", 0) == 0);
  for (const char* header : {"IDENTITY", "PHASE", "ATTEMPTS", "AGE", "NEXT DUE"}) CHECK_THAT(list.out, Catch::Contains(header));

  std::map<std::string, std::string> phases;
  for (const auto& m : parse_json(scene.ctl({"list", "-o", "json"}))) phases[m["identity"]] = m["phase"];
  CHECK(phases == std::map<std::string, std::string>{{"ok-1", "ready"},
                                                     {kOddIdentity, "ready"},
                                                     {"slow-1", "reconciling"},
                                                     {"fail-1", "retrying"},
                                                     {"terminal-1", "failed"},
                                                     {"waiting-1", "pending"},
                                                     {"removed-1", "deleting"}});
  auto failed_only = parse_json(scene.ctl({"list", "--phase", "failed", "-o", "json"}));
  REQUIRE(failed_only.size() == 1);
  CHECK(failed_only[0]["identity"] == "terminal-1");

  auto why = [&](const std::string& kind, const std::string& id) {
    auto ran = scene.ctl({"why", kind, id});
    INFO(ran.out);
    CHECK(ran.status == 0);
    return ran.out;
  };
  CHECK_THAT(why("op", "ok-1"), Catch::StartsWith("ready: generation 1 is materialized"));
  CHECK_THAT(why("op", "slow-1"),
             Catch::StartsWith("materializing generation 1: leased by worker " + scene.bucket().worker_id() + " since "));
  CHECK_THAT(why("op", "fail-1"), Catch::StartsWith("waiting for backoff until ") &&
                                      Catch::Contains("after 1 failure(s) (last error: boom: fail-1 is unreachable)"));
  CHECK_THAT(why("op", "terminal-1"),
             Catch::StartsWith("failed terminally after 1 attempt(s) with: bad config for terminal-1"));
  CHECK_THAT(why("idle", "waiting-1"),
             Catch::StartsWith("waiting for a token: generation 1 is due since ") &&
                 Catch::Contains("no worker of kind 'idle' has taken it yet"));
  CHECK_THAT(why("idle", "removed-1"), Catch::StartsWith("being removed: waiting for a token, then a worker of kind 'idle'"));
  auto missing = scene.ctl({"why", "op", "nobody"});
  CHECK(missing.status == 1);
  CHECK_THAT(missing.out, Catch::Contains("no matter of kind 'op' with identity 'nobody'"));

  auto described = scene.ctl({"describe", "op", "fail-1"});
  INFO(described.out);
  REQUIRE(described.status == 0);
  for (const char* line : {"kind:          op", "identity:      fail-1", "phase:         retrying",
                           "generation:    1 (materialized 0)", "lease:         -", "history (last 1, newest first):",
                           "retry", "\"mode\": \"fail\""})
    CHECK_THAT(described.out, Catch::Contains(line));
  auto detail = parse_json(scene.ctl({"describe", "op", "fail-1", "-o", "json"}));
  CHECK(detail["phase"] == "retrying");
  CHECK(detail["attempts"] == 1);
  CHECK(detail["lease_owner"].is_null());
  CHECK(detail["due_in_ms"].get<std::int64_t>() > 30'000);
  REQUIRE(detail["history"].size() == 1);
  CHECK(detail["history"][0]["outcome"] == "retry");
  CHECK(detail["history"][0]["error"] == "boom: fail-1 is unreachable");
  CHECK(detail["history"][0]["worker"] == scene.bucket().worker_id());
  CHECK(detail["history"][0]["duration_ms"].get<std::int64_t>() >= 0);
  auto leased = parse_json(scene.ctl({"describe", "op", "slow-1", "-o", "json"}));
  CHECK(leased["lease_owner"] == scene.bucket().worker_id());
  CHECK_FALSE(leased["leased_at"].is_null());
  CHECK(parse_json(scene.ctl({"describe", "op", kOddIdentity, "-o", "json"}))["history"][0]["outcome"] == "done");

  std::map<std::string, json> stats;
  for (const auto& k : parse_json(scene.ctl({"stats", "-o", "json"}))) stats[k["kind"]] = k;
  REQUIRE(stats.size() == 2);
  CHECK(stats["op"]["phases"] == json{{"ready", 2}, {"reconciling", 1}, {"retrying", 1}, {"failed", 1}});
  CHECK(stats["op"]["in_flight"] == 1);
  CHECK(stats["idle"]["phases"] == json{{"pending", 1}, {"deleting", 1}});
  CHECK(stats["idle"]["due_now"] == 2);
  CHECK_FALSE(stats["idle"]["oldest_due"].is_null());
  // Nobody fetches idle's tokens: they wait in the stream.
  CHECK(stats["idle"]["tokens_pending"].get<std::int64_t>() >= 1);
  CHECK(stats["idle"]["consumer_lag"].get<std::int64_t>() >= 1);
  auto table = scene.ctl({"stats"});
  CHECK_THAT(table.out, Catch::StartsWith("KIND") && Catch::Contains("OLDEST DUE") && Catch::Contains("LAG"));
}

TEST_CASE("dmmctl retry, remove, watch and migrate act on matters", "[operate]") {
  Scene scene;
  scene.start();

  // Bulk changes only count until confirmed.
  auto dry = scene.ctl({"retry", "--phase", "failed"});
  CHECK(dry.status == 2);
  CHECK_THAT(dry.out, Catch::Contains("1 matter(s) match phase failed; add --yes to retry them"));
  CHECK(query_matter(scene.name(), "op", "terminal-1")->attempts == 1);
  auto bulk = scene.ctl({"retry", "--phase", "failed", "--yes"});
  CHECK(bulk.status == 0);
  CHECK_THAT(bulk.out, Catch::Contains("retried 1 matter(s)"));
  // It runs again (and fails terminally again): two attempts in its history.
  wait_until([&] { return dmm::describe(servers().postgres, scene.name(), "op", "terminal-1")->history.size() == 2; },
             10s, "terminal-1 retried");

  auto one = scene.ctl({"retry", "op", "fail-1"});
  CHECK(one.status == 0);
  CHECK_THAT(one.out, Catch::Contains("retried 1 matter(s)"));
  CHECK(scene.ctl({"retry", "op", "ok-1"}).status == 1);  // ready: nothing to retry

  auto removed = scene.ctl({"remove", "op", "ok-1"});
  CHECK(removed.status == 0);
  CHECK_THAT(removed.out, Catch::Contains("removed 1 matter(s): marked for removal"));
  wait_until([&] { return query_phase(scene.name(), "op", "ok-1") == "(absent)"; }, 10s,
             "ok-1 deleted by the worker");
  auto forced = scene.ctl({"remove", "--kind", "idle", "--phase", "pending", "--yes", "--skip-finalize"});
  CHECK_THAT(forced.out, Catch::Contains("removed 1 matter(s) (deleted without finalize)"));
  CHECK(query_phase(scene.name(), "idle", "waiting-1") == "(absent)");

  // watch reports the phase changes of a matter notified while it runs.
  {
    Process watch(env_or_fail("DMM_TEST_DMMCTL"),
                  {"watch", "--kind", "op", "--interval-ms", "200", "--count", "1", "--timeout", "20", "--postgres",
                   servers().postgres, "--nats", servers().nats, "--bucket", scene.name()});
    watch.expect_line_containing("watching ", 20s);  // its first snapshot is taken
    scene.bucket().notify(Op{"watched"});
    watch.expect_line_containing("  op  watched  (new) -> ", 20s);
    CHECK(watch.wait(20s) == std::optional<int>(0));
  }

  auto migrations = scene.ctl({"migrate", "status"});
  INFO(migrations.out);
  CHECK(migrations.status == 0);
  for (const auto& m : dmm::migration_status(servers().postgres)) {
    CHECK_THAT(migrations.out, Catch::Contains(m.name) && Catch::Contains(m.checksum));
  }
  auto applied = scene.ctl({"migrate"});
  CHECK_THAT(applied.out, Catch::Contains("applied 0 migration(s)") && Catch::Contains("0002_attempts.sql"));
}

TEST_CASE("the attempt history keeps the last history_limit attempts of a matter", "[operate]") {
  const auto name = unique_name("hist");
  auto bucket = open_bucket(name);
  auto options = fast_kind();
  options.history_limit = 3;
  options.backoff = {.initial = std::chrono::milliseconds(5), .max = std::chrono::milliseconds(20)};
  bucket.register_kind<Op>("op", options);
  Runner runner(bucket);
  bucket.notify(Op{"flaky", "fail"});
  wait_until([&] { return query_matter(name, "op", "flaky")->attempts >= 6; }, 20s, "six failed attempts");
  auto detail = dmm::describe(servers().postgres, name, "op", "flaky", 10);
  REQUIRE(detail);
  REQUIRE(detail->history.size() == 3);
  CHECK(detail->history[0].seq == detail->history[1].seq + 1);
  CHECK(detail->history[1].seq == detail->history[2].seq + 1);
  CHECK(detail->history[0].seq >= 6);
  for (const auto& a : detail->history) CHECK(a.outcome == "retry");
}

TEST_CASE("attempts older than history_retention are pruned, newer ones kept", "[operate]") {
  const auto name = unique_name("prune");
  auto bucket = open_bucket(name, [](dmm::BucketOptions& o) { o.history_retention = std::chrono::hours(24); });
  bucket.register_kind<Op>("op", fast_kind());
  bucket.notify(Op{"fresh"});
  // Two attempts of a matter that is long gone (a row id no matter has; the
  // history's key is not per bucket), one older than the retention.
  const std::string gone = std::to_string(-1 - static_cast<long>(std::random_device{}() % 1'000'000'000));
  {
    pqxx::work tx(pg());
    tx.exec_params(
        "INSERT INTO dmm.attempt (matter_id, slot, seq, bucket, generation, attempt, started_at, duration_ms, outcome, "
        "worker) VALUES ($2, 0, 0, $1, 1, 1, now() - interval '2 days', 1, 'done', 'test'), "
        "($2, 1, 1, $1, 1, 1, now() - interval '1 hour', 1, 'done', 'test')",
        name, std::stoll(gone));
    tx.commit();
  }
  auto history_rows = [&](const std::string& where) {
    pqxx::nontransaction tx(pg());
    return tx.exec_params("SELECT count(*) FROM dmm.attempt WHERE bucket = $1 AND " + where, name)[0][0].as<int>();
  };
  Runner runner(bucket);  // its sweeper prunes soon after it starts
  wait_until([&] { return history_rows("started_at < now() - interval '1 day'") == 0; }, 30s,
             "the attempt older than the retention to be pruned");
  CHECK(history_rows("matter_id = " + gone) == 1);  // the hour-old one stays
  wait_until([&] { return history_rows("matter_id <> " + gone) == 1; }, 10s, "fresh's attempt to be recorded");
}

TEST_CASE("the HTTP endpoint serves metrics, health, readiness and a web view Chromium can show", "[operate]") {
  Scene scene;
  const int port = scene.bucket().serve_http("127.0.0.1:0");
  REQUIRE(port > 0);
  httplib::Client http("127.0.0.1", port);

  auto health = http.Get("/healthz");
  REQUIRE(health);
  CHECK(health->status == 200);
  auto not_ready = http.Get("/readyz");
  REQUIRE(not_ready);
  CHECK(not_ready->status == 503);  // nothing works the kinds yet
  CHECK_THAT(not_ready->body, Catch::Contains("postgres: ok") && Catch::Contains("consumer op: not bound"));

  scene.start();
  auto ready = http.Get("/readyz");
  REQUIRE(ready);
  INFO(ready->body);
  // idle is registered but not worked in this process, so not every consumer is bound.
  CHECK(ready->status == 503);
  CHECK_THAT(ready->body, Catch::Contains("consumer op: bound") && Catch::Contains("consumer idle: not bound"));

  auto metrics = http.Get("/metrics");
  REQUIRE(metrics);
  CHECK(metrics->status == 200);
  const auto& text = metrics->body;
  INFO(text);
  const std::string labels = "bucket=\"" + scene.name() + "\",kind=\"op\"";
  CHECK_THAT(text, Catch::Contains("dmm_materializations_total{" + labels + ",outcome=\"done\"} 2"));
  CHECK_THAT(text, Catch::Contains("dmm_materializations_total{" + labels + ",outcome=\"retry\"} 1"));
  CHECK_THAT(text, Catch::Contains("dmm_materializations_total{" + labels + ",outcome=\"failed\"} 1"));
  CHECK_THAT(text, Catch::Contains("dmm_in_flight{" + labels + "} 1"));
  CHECK_THAT(text, Catch::Contains("dmm_materialization_duration_seconds_count{" + labels + "} 4"));
  CHECK_THAT(text, Catch::Contains("dmm_materialization_duration_seconds_bucket{" + labels + ",le=\"+Inf\"} 4"));
  CHECK_THAT(text, Catch::Contains("dmm_due{bucket=\"" + scene.name() + "\",kind=\"idle\"} 2"));
  CHECK_THAT(text, Catch::Contains("dmm_matters{bucket=\"" + scene.name() + "\",kind=\"idle\",phase=\"deleting\"} 1"));
  for (const char* name : {"dmm_retries_total{", "dmm_lease_takeovers_total{", "dmm_token_publish_errors_total{",
                           "dmm_token_ack_errors_total{", "dmm_notifies_grouped_total{",
                           "# TYPE dmm_materialization_duration_seconds histogram"})
    CHECK_THAT(text, Catch::Contains(name));

  auto page = http.Get("/?kind=op");
  REQUIRE(page);
  CHECK(page->status == 200);
  CHECK_THAT(page->body, Catch::Contains("ready &lt;b&gt;&amp;&quot;ü&#39;"));
  CHECK_THAT(page->body, !Catch::Contains(kOddIdentity));  // never unescaped
  CHECK_THAT(page->body, Catch::Contains("id=\"auto-refresh\""));

  // Headless Chromium renders the pages: the list shows the matter created
  // here, the detail page its why sentence. Missing Chromium is a failure.
  const std::string chromium = "/usr/bin/chromium";
  if (!std::filesystem::exists(chromium))
    FAIL("Chromium is missing (" << chromium << "): run scripts/setup, which installs Debian's chromium package");
  const auto profile = std::filesystem::temp_directory_path() / unique_name("chromium");
  const auto build_dir = env_or_fail("DMM_TEST_BUILD_DIR");
  const auto screenshot = std::filesystem::path(build_dir) / "web-view.png";
  std::filesystem::remove(screenshot);
  auto browse = [&](const std::vector<std::string>& what, const std::string& url) {
    std::vector<std::string> args = {"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                                     "--disable-background-networking", "--disable-component-update",
                                     "--disable-sync", "--user-data-dir=" + profile.string(),
                                     "--window-size=1280,900"};
    args.insert(args.end(), what.begin(), what.end());
    args.push_back(url);
    return run(chromium, args);
  };
  const std::string base = "http://127.0.0.1:" + std::to_string(port);
  auto dom = browse({"--dump-dom"}, base + "/");
  INFO(dom.out);
  CHECK(dom.status == 0);
  CHECK_THAT(dom.out, Catch::Contains("ready &lt;b&gt;&amp;\"ü'"));  // the identity as text, re-serialized by Chromium
  CHECK_THAT(dom.out, Catch::Contains("terminal-1") && Catch::Contains("phase-failed"));
  auto detail_dom = browse({"--dump-dom"}, base + "/matter?kind=op&identity=fail-1");
  CHECK_THAT(detail_dom.out, Catch::Contains("waiting for backoff until") && Catch::Contains("boom: fail-1 is unreachable"));
  auto shot = browse({"--screenshot=" + screenshot.string()}, base + "/");
  INFO(shot.out);
  CHECK(shot.status == 0);
  REQUIRE(std::filesystem::exists(screenshot));
  CHECK(std::filesystem::file_size(screenshot) > 1000);
  std::filesystem::remove_all(profile);
}

TEST_CASE("dmmctl list and stats show every bucket with -A, or when none is named and there are several",
          "[operate]") {
  const auto first = unique_name("multi-a"), second = unique_name("multi-b");
  auto a = open_bucket(first);
  auto b = open_bucket(second);
  a.register_kind<Idle>("idle", fast_kind());
  b.register_kind<Idle>("idle", fast_kind());
  a.notify(Idle{"lamp-a"});
  b.notify(Idle{"lamp-b"});
  const auto ctl = [](std::vector<std::string> args) {
    for (std::string x : {"--postgres", servers().postgres.c_str()}) args.push_back(x);
    return run(env_or_fail("DMM_TEST_DMMCTL"), args);
  };
  for (const auto& args : {std::vector<std::string>{"list", "-A", "--kind", "idle", "-o", "json"},
                           std::vector<std::string>{"list", "--kind", "idle", "-o", "json"}}) {
    std::map<std::string, std::string> bucket_of;
    for (const auto& m : parse_json(ctl(args))) bucket_of[m["identity"]] = m["bucket"];
    CHECK(bucket_of["lamp-a"] == first);
    CHECK(bucket_of["lamp-b"] == second);
  }
  auto table = ctl({"stats", "-A"});
  INFO(table.out);
  REQUIRE(table.status == 0);
  CHECK_THAT(table.out, Catch::StartsWith("BUCKET") && Catch::Contains(first) && Catch::Contains(second));
  // Naming a bucket shows it alone, without the column.
  auto one = ctl({"stats", "--bucket", first});
  INFO(one.out);
  REQUIRE(one.status == 0);
  CHECK_THAT(one.out, Catch::StartsWith("KIND") && !Catch::Contains(second));
}
