// The web view people act on (issue 17): natural order, search and paging,
// the chart with real data, and retry/remove behind a token — checked with
// httplib and in headless Chromium from Debian (screenshots under
// <build>/web-view-screenshots/).
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <httplib.h>
#include <regex>
#include <spdlog/sinks/ostream_sink.h>
#include <sstream>

#include "harness.hpp"

extern char** environ;

namespace {

using namespace dmm_test;
namespace fs = std::filesystem;

// Never worked here: its matters stay pending.
struct Player {
  std::string id;
  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context&) { return dmm::Result::done(); }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Player, id)

// "broken-*" fails terminally until the operator has fixed things (healed).
std::atomic<bool> healed{false};
struct Heal {
  std::string id;
  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context&) {
    if (id.starts_with("broken") && !healed) throw dmm::TerminalError("bad config for " + id);
    return dmm::Result::done();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Heal, id)

const std::string kToken = "web-view-test-token-0123456789";

std::string env_or_fail(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) FAIL(name << " is not set (ctest sets it)");
  return v;
}

// Headless Chromium from Debian, as the machine notes say; missing is a failure.
class Chromium {
 public:
  Chromium() : profile_(fs::temp_directory_path() / unique_name("chromium")) {
    if (!fs::exists(kBinary))
      FAIL("Chromium is missing (" << kBinary << "): run scripts/setup, which installs Debian's chromium package");
    shots_ = fs::path(env_or_fail("DMM_TEST_BUILD_DIR")) / "web-view-screenshots";
    fs::create_directories(shots_);
  }
  ~Chromium() { fs::remove_all(profile_); }

  // The DOM after load (and after a form the page submits itself).
  std::string dom(const std::string& url) { return run({"--dump-dom"}, url); }
  // A screenshot under web-view-screenshots/; returns its path.
  fs::path screenshot(const std::string& name, const std::string& url) {
    const auto path = shots_ / name;
    fs::remove(path);
    run({"--screenshot=" + path.string(), "--window-size=1280,1100"}, url);
    REQUIRE(fs::exists(path));
    CHECK(fs::file_size(path) > 1000);
    return path;
  }
  const fs::path& folder() const { return shots_; }

 private:
  static constexpr const char* kBinary = "/usr/bin/chromium";
  fs::path profile_, shots_;

  std::string run(std::vector<std::string> what, const std::string& url) {
    std::vector<std::string> args = {kBinary,
                                     "--headless",
                                     "--no-sandbox",
                                     "--disable-gpu",
                                     "--disable-quic",
                                     "--no-first-run",
                                     "--disable-background-networking",
                                     "--disable-component-update",
                                     "--disable-sync",
                                     "--allow-file-access-from-files",
                                     "--user-data-dir=" + profile_.string()};
    args.insert(args.end(), what.begin(), what.end());
    args.push_back(url);
    int fds[2];
    REQUIRE(pipe(fds) == 0);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addclose(&actions, fds[0]);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid = -1;
    const int rc = posix_spawn(&pid, kBinary, &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    close(fds[1]);
    REQUIRE(rc == 0);
    std::string out;
    char buf[4096];
    for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) > 0;) out.append(buf, static_cast<std::size_t>(n));
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    INFO(out);
    REQUIRE(WIFEXITED(status));
    REQUIRE(WEXITSTATUS(status) == 0);
    return out;
  }
};

// A page that submits the matter page's action form at once, with `token`
// (empty: none) — what a person does by typing the token and pressing the
// button. The form's action and fields are taken from the served page.
std::string submitting_page(const fs::path& folder, const std::string& name, const std::string& base,
                            const std::string& matter_dom, const std::string& action, const std::string& token) {
  std::smatch m;
  const std::regex form("<form[^>]*id=\"" + action + "-form\"[^>]*action=\"([^\"]+)\"[^>]*>(.*?)</form>");
  REQUIRE(std::regex_search(matter_dom, m, form));
  std::string fields = m[2].str();
  // Fill the token field as a person would.
  fields = std::regex_replace(fields, std::regex("<input type=\"password\" name=\"token\"[^>]*>"),
                              "<input type=\"hidden\" name=\"token\" value=\"" + token + "\">");
  const auto path = folder / name;
  std::ofstream(path) << "<!DOCTYPE html><html><body><form id=\"f\" method=\"post\" action=\"" << base << m[1].str()
                      << "\">" << fields << "</form><script>document.getElementById('f').submit();</script>"
                      << "</body></html>\n";
  return "file://" + path.string();
}

}  // namespace

TEST_CASE("the web view lists identities in natural order, finds them by prefix and pages beyond 200",
          "[web-view]") {
  const auto name = unique_name("webpage");
  auto bucket = open_bucket(name);
  bucket.register_kind<Player>("player", fast_kind());
  std::vector<Player> players;
  for (int i = 1; i <= 450; ++i) players.push_back({"player-" + std::to_string(i)});
  players.push_back({"other-1"});
  bucket.notify_many(players);
  const int port = bucket.serve_http("127.0.0.1:0");
  httplib::Client http("127.0.0.1", port);

  auto first = http.Get("/?kind=player");
  REQUIRE(first);
  REQUIRE(first->status == 200);
  const auto& body = first->body;
  CHECK_THAT(body, Catch::Contains("1-200 of 451") && Catch::Contains("id=\"next-page\""));
  const auto at = [&](const std::string& id) { return body.find(">" + id + "</a>"); };
  REQUIRE(at("player-2") != std::string::npos);
  REQUIRE(at("player-10") != std::string::npos);
  CHECK(at("other-1") < at("player-1"));
  CHECK(at("player-1") < at("player-2"));
  CHECK(at("player-2") < at("player-10"));
  CHECK(at("player-9") < at("player-10"));
  CHECK(at("player-199") != std::string::npos);
  CHECK(at("player-200") == std::string::npos);  // on page 2

  auto third = http.Get("/?kind=player&page=3");
  REQUIRE(third);
  CHECK_THAT(third->body, Catch::Contains("401-451 of 451") && Catch::Contains(">player-450</a>") &&
                              Catch::Contains("id=\"previous-page\"") && !Catch::Contains("id=\"next-page\""));

  // The search, typed in Chromium's address bar as the form sends it.
  Chromium chromium;
  const std::string base = "http://127.0.0.1:" + std::to_string(port);
  auto found = chromium.dom(base + "/?kind=&phase=&q=player-42");
  INFO(found);
  CHECK_THAT(found, Catch::Contains("1-11 of 11") && Catch::Contains(">player-42</a>") &&
                        Catch::Contains(">player-429</a>") && !Catch::Contains(">player-4</a>"));
  chromium.screenshot("search.png", base + "/?q=player-42");

  // Without a token the endpoint has no actions: the page says so, a POST is refused.
  auto matter = http.Get("/matter?kind=player&identity=player-7");
  REQUIRE(matter);
  CHECK_THAT(matter->body, Catch::Contains("actions are off") && !Catch::Contains("retry-form"));
  auto refused = http.Post("/matter/remove", "kind=player&identity=player-7", "application/x-www-form-urlencoded");
  REQUIRE(refused);
  CHECK(refused->status == 403);
  CHECK_THAT(refused->body, Catch::Contains("actions are off on this endpoint"));
  CHECK(query_phase(name, "player", "player-7") == "pending");
}

TEST_CASE("the web view charts real data, and a retry from a matter's page needs the token and runs it again",
          "[web-view]") {
  healed = false;
  const auto name = unique_name("webact");
  std::ostringstream log;
  auto logger = std::make_shared<spdlog::logger>("web-view", std::make_shared<spdlog::sinks::ostream_sink_mt>(log));
  logger->set_level(spdlog::level::info);
  auto bucket = open_bucket(name, [&](dmm::BucketOptions& o) { o.logger = logger; });
  bucket.register_kind<Heal>("heal", fast_kind());
  REQUIRE_THROWS_AS(bucket.serve_http("127.0.0.1:0", {.action_token = "short"}), dmm::InvalidArgument);
  const int port = bucket.serve_http("127.0.0.1:0", {.action_token = kToken, .sample_every = 200ms});
  const std::string base = "http://127.0.0.1:" + std::to_string(port);
  Runner runner(bucket);
  std::vector<Heal> matters;
  for (int i = 1; i <= 5; ++i) matters.push_back({"ok-" + std::to_string(i)});
  matters.push_back({"broken-1"});
  bucket.notify_many(matters);
  wait_until([&] { return count_converged(name, "heal") == 5 && query_phase(name, "heal", "broken-1") == "failed"; },
             20s, "five ready and broken-1 failed");
  std::this_thread::sleep_for(1500ms);  // several samples of that

  Chromium chromium;
  auto list = chromium.dom(base + "/");
  {
    INFO(list);
    CHECK_THAT(list, Catch::Contains("id=\"chart-phases\"") && Catch::Contains("id=\"chart-rates\""));
    CHECK_THAT(list, Catch::Contains("data-series=\"ready\">ready 5<") &&
                         Catch::Contains("data-series=\"failed\">failed 1<"));
    // The phase lines and the rates have points; some materializations were counted.
    std::smatch m;
    REQUIRE(std::regex_search(list, m, std::regex("data-series=\"ready\" data-points=\"(\\d+)\"")));
    CHECK(std::stoi(m[1]) >= 3);
    REQUIRE(std::regex_search(list, m, std::regex("data-series=\"materializations/s\" data-points=\"(\\d+)\"")));
    CHECK(std::stoi(m[1]) >= 2);
    CHECK_THAT(list, !Catch::Contains("collecting samples"));
  }
  chromium.screenshot("chart.png", base + "/");

  // The search finds the broken matter.
  auto found = chromium.dom(base + "/?q=broken");
  CHECK_THAT(found, Catch::Contains("1-1 of 1") && Catch::Contains(">broken-1</a>") && !Catch::Contains(">ok-1</a>"));

  const std::string matter_url = base + "/matter?kind=heal&identity=broken-1";
  const auto matter_dom = chromium.dom(matter_url);
  CHECK_THAT(matter_dom, Catch::Contains("id=\"retry-form\"") && Catch::Contains("id=\"remove-form\""));
  chromium.screenshot("matter-failed.png", matter_url);
  auto attempts = [&] {
    pqxx::nontransaction tx(pg());
    return tx.exec_params("SELECT count(*) FROM dmm.attempt a JOIN dmm.matter m ON m.id = a.matter_id "
                          "WHERE m.bucket = $1 AND m.identity = 'broken-1'",
                          name)[0][0]
        .as<int>();
  };
  const int attempts_before = attempts();

  // Without the token, and with a wrong one: refused, nothing changes.
  auto no_token = chromium.dom(submitting_page(chromium.folder(), "retry-no-token.html", base, matter_dom, "retry", ""));
  CHECK_THAT(no_token, Catch::Contains("refused: this action needs the endpoint's action token"));
  auto wrong = chromium.dom(
      submitting_page(chromium.folder(), "retry-wrong-token.html", base, matter_dom, "retry", "not-the-token-at-all"));
  CHECK_THAT(wrong, Catch::Contains("refused: the action token is wrong"));
  httplib::Client http("127.0.0.1", port);
  auto bare = http.Post("/matter/retry", "kind=heal&identity=broken-1", "application/x-www-form-urlencoded");
  REQUIRE(bare);
  CHECK(bare->status == 403);
  auto as_get = http.Get("/matter/retry?kind=heal&identity=broken-1&token=" + kToken);
  REQUIRE(as_get);
  CHECK(as_get->status == 404);  // actions are POST only
  CHECK(query_phase(name, "heal", "broken-1") == "failed");
  CHECK(attempts() == attempts_before);

  // The operator fixes the cause, then retries from the page with the token.
  healed = true;
  auto retried = chromium.dom(submitting_page(chromium.folder(), "retry.html", base, matter_dom, "retry", kToken));
  CHECK_THAT(retried, Catch::Contains("retry: the matter runs again now"));
  wait_until([&] { return query_phase(name, "heal", "broken-1") == "ready"; }, 20s, "broken-1 ready after the retry");
  CHECK(attempts() == attempts_before + 1);
  chromium.screenshot("matter-retried.png", matter_url);

  // Remove through the header instead of the form field.
  httplib::Headers headers = {{"X-DMM-Token", kToken}};
  auto removed = http.Post("/matter/remove", headers, "kind=heal&identity=ok-1", "application/x-www-form-urlencoded");
  REQUIRE(removed);
  CHECK(removed->status == 303);
  wait_until([&] { return count_matters(name, "heal") == 5; }, 20s, "ok-1 removed");

  // The token is in no log line; the actions and refusals are.
  logger->flush();
  CHECK_THAT(log.str(), !Catch::Contains(kToken) && Catch::Contains("web view retry of heal 'broken-1'") &&
                            Catch::Contains("web view refused retry"));
}
