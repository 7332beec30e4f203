// Helpers for tests of things that serve HTTP: a page by GET, a watch that
// polls a server during a change (proof that it served the whole time, not
// just at the end), and the "web" rollout's versions (python3's http.server).
#pragma once

#include <httplib.h>

#include <atomic>
#include <functional>
#include <string>
#include <thread>

#include "host.hpp"

namespace ctl_test {

using dmm::controllers::rollouts::RolloutSpec;

// The body of GET 127.0.0.1:<port><path>, or "" unless it answers 200.
inline std::string get_page(int port, const std::string& path = "/index.html") {
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(2, 0);
  client.set_read_timeout(2, 0);
  auto res = client.Get(path.c_str());
  return res && res->status == 200 ? res->body : "";
}

// Calls `serving` every 20 ms on a thread of its own until stop(), counting
// the calls and those that returned false.
class ServingWatch {
 public:
  explicit ServingWatch(std::function<bool()> serving)
      : thread_([this, serving = std::move(serving)](std::stop_token st) {
          while (!st.stop_requested()) {
            ++(serving() ? served_ : missed_);
            std::this_thread::sleep_for(20ms);  // a polling interval, not a synchronization
          }
        }) {}
  void stop() { thread_ = {}; }
  int polls() const { return served_ + missed_; }
  int missed() const { return missed_; }

 private:
  std::atomic<int> served_{0}, missed_{0};
  std::jthread thread_;  // last: started after the counters exist, joined before they go
};

// Two different closed ports.
inline std::pair<int, int> two_ports() {
  const int a = dmm_test::closed_port();
  int b = dmm_test::closed_port();
  while (b == a) b = dmm_test::closed_port();
  return {a, b};
}

// Version `version` of the rollout "web": python3's http.server on `port`
// serving <dir>/<version>/index.html ("<version>\n"), its pid appended to
// <dir>/<version>.pids, its configuration <dir>/web.conf ("version=<version>\n"),
// healthy when GET `health_path` answers 2xx (probed every 100 ms).
inline RolloutSpec web_version(const TempDir& dir, const std::string& version, int port,
                               const std::string& health_path = "/index.html") {
  fs::create_directories(dir.path() / version);
  write_file(dir / (version + "/index.html"), version + "\n");
  const auto p = std::to_string(port);
  return RolloutSpec{
      .name = "web",
      .version = version,
      .command = "sh",
      .args = {"-c", "echo $$ >> '" + dir / (version + ".pids") + "'; exec python3 -m http.server " + p +
                         " --bind 127.0.0.1"},
      .cwd = dir / version,
      .config = {.path = dir / "web.conf", .content = "version=" + version + "\n"},
      .health = {.url = "http://127.0.0.1:" + p + health_path, .interval_ms = 100, .attempts = 200},
      .stop_grace_ms = 2000};
}

// The pids version `version` of "web" ran as (see web_version).
inline std::vector<int> pids_of(const TempDir& dir, const std::string& version) {
  std::vector<int> pids;
  std::istringstream in(read_file(dir / (version + ".pids")));
  for (int pid; in >> pid;) pids.push_back(pid);
  return pids;
}

inline bool all_gone(const std::vector<int>& pids) {
  for (int pid : pids)
    if (::kill(pid, 0) == 0) return false;
  return true;
}

}  // namespace ctl_test
