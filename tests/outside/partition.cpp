// The partition check: a worker whose link to PostgreSQL freezes for three
// lease TTLs while it runs matters must stop them before another worker takes
// them over (docs/DESIGN.md, "Self-expiry"; contract line 22). Its proxy is
// its own: a child process forwarding TCP, frozen with SIGSTOP (connections
// hang, nothing is reset: the kernel still acknowledges what the worker
// sends) and healed with SIGCONT.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <pqxx/pqxx>
#include <stdexcept>
#include <thread>

#include "checks.hpp"
#include "kinds.hpp"
#include "workers.hpp"

namespace flow_check {
namespace {

// Copies from one socket to the other until either end closes.
void pump(int from, int to) {
  char buf[65536];
  while (true) {
    const auto n = ::recv(from, buf, sizeof buf, 0);
    if (n <= 0) break;
    for (ssize_t sent = 0; sent < n;) {
      const auto m = ::send(to, buf + sent, static_cast<std::size_t>(n - sent), MSG_NOSIGNAL);
      if (m <= 0) {
        ::shutdown(from, SHUT_RDWR);
        return;
      }
      sent += m;
    }
  }
  ::shutdown(to, SHUT_RDWR);
}

sockaddr_in loopback(int port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  return addr;
}

// A TCP proxy in a child process, from a free port on 127.0.0.1 to
// 127.0.0.1:target.
class FreezableProxy {
 public:
  explicit FreezableProxy(int target) {
    listen_ = ::socket(AF_INET, SOCK_STREAM, 0);
    auto addr = loopback(0);
    socklen_t len = sizeof addr;
    if (::bind(listen_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(listen_, 128) != 0 ||
        ::getsockname(listen_, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
      throw std::runtime_error("partition: the proxy cannot listen on 127.0.0.1");
    port_ = ntohs(addr.sin_port);
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("partition: cannot fork the proxy");
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(0);
      while (true) {
        const int client = ::accept(listen_, nullptr, nullptr);
        if (client < 0) continue;
        const int server = ::socket(AF_INET, SOCK_STREAM, 0);
        const auto to = loopback(target);
        if (::connect(server, reinterpret_cast<const sockaddr*>(&to), sizeof to) != 0) {
          ::close(server);
          ::close(client);
          continue;
        }
        std::thread([client, server] {
          std::thread down(pump, server, client);
          pump(client, server);
          down.join();
          ::close(client);
          ::close(server);
        }).detach();
      }
    }
    ::close(listen_);
  }
  ~FreezableProxy() {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  FreezableProxy(const FreezableProxy&) = delete;
  FreezableProxy& operator=(const FreezableProxy&) = delete;

  int port() const { return port_; }
  void freeze() { ::kill(pid_, SIGSTOP); }
  void heal() { ::kill(pid_, SIGCONT); }

 private:
  int listen_ = -1;
  int port_ = 0;
  pid_t pid_ = -1;
};

// `url` (postgresql://[user@]host:port/db[?...]) with 127.0.0.1:port instead.
std::string through(const std::string& url, int port) {
  const auto start = url.find("://");
  if (start == std::string::npos)
    throw std::invalid_argument("partition: needs a postgresql:// URL to put the proxy in, not '" +
                                dmm::mask_url(url) + "'");
  const auto end = url.find_first_of("/?", start + 3);
  const auto authority = url.substr(start + 3, end == std::string::npos ? std::string::npos : end - start - 3);
  const auto at = authority.rfind('@');
  return url.substr(0, start + 3) + (at == std::string::npos ? "" : authority.substr(0, at + 1)) + "127.0.0.1:" +
         std::to_string(port) + (end == std::string::npos ? "" : url.substr(end));
}

}  // namespace

void check_partition(const Servers& s, Report& report) {
  const auto name = unique_bucket("partition");
  auto bucket = open_bucket(s, name, "partition");
  pqxx::connection pg(s.postgres);
  FreezableProxy proxy(std::stoi(pg.port()));

  std::vector<Held> held;
  for (int i = 0; i < kHeld; ++i) held.push_back({.id = "held-" + std::to_string(i)});
  bucket.notify_many(held);

  // The worker to be cut off, alone first, until it runs every held matter.
  setenv("FLOW_CHECK_WORKER_POSTGRES", through(s.postgres, proxy.port()).c_str(), 1);
  setenv("FLOW_CHECK_ROLE", "holder", 1);
  Workers cut_off("partition", name, 1);
  unsetenv("FLOW_CHECK_WORKER_POSTGRES");
  unsetenv("FLOW_CHECK_ROLE");
  const auto running = "SELECT count(DISTINCT identity) FROM flow_check.run WHERE bucket = $1";
  const auto waited = wait_for(cut_off, 30s, [&] { return scalar(pg, running, name) >= kHeld; });
  if (!waited.empty()) {
    report.check(false, "partition: the holder did not start all " + std::to_string(kHeld) + " matters: " + waited);
    return;
  }
  // Frozen for three lease TTLs; meanwhile another worker takes the matters
  // over as their leases end.
  const auto frozen_at = std::chrono::steady_clock::now();
  proxy.freeze();
  Workers other("partition", name, 1);
  std::string died;
  while (std::chrono::steady_clock::now() - frozen_at < 3 * kHeldLease && died.empty()) {
    died = cut_off.ended() + other.ended();
    std::this_thread::sleep_for(20ms);
  }
  proxy.heal();
  const auto frozen_ms =
      std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - frozen_at).count();
  const auto converged = [&] {
    int n = 0;
    for (const auto& m : dmm::inspect({.postgres = s.postgres, .bucket = name, .kind = "held"}))
      n += m.phase == "ready" && m.generation == m.materialized_generation;
    return n;
  };
  const auto done = died.empty() ? wait_for(other, 30s, [&] { return converged() >= kHeld; }) : died;
  const auto stopped_other = other.stop(20s);
  const auto stopped_cut = cut_off.stop(20s);
  report.check(done.empty(), "partition: all " + std::to_string(kHeld) + " matters converged after a freeze of " +
                                 std::to_string(frozen_ms) + " ms" + (done.empty() ? "" : ": " + done));
  report.check(stopped_other.empty() && stopped_cut.empty(),
               "partition: both workers stopped cleanly" +
                   (stopped_other.empty() && stopped_cut.empty() ? "" : ": " + stopped_other + " " + stopped_cut));

  // Runs of one identity that overlap in time (an unfinished run overlaps
  // every later one), and the takeovers the freeze caused.
  const auto overlaps = scalar(pg, R"sql(
SELECT count(*) FROM flow_check.run a JOIN flow_check.run b
  ON a.bucket = b.bucket AND a.identity = b.identity AND a.id < b.id
 WHERE a.bucket = $1 AND b.started_at < coalesce(a.ended_at, 'infinity'))sql",
                               name);
  const auto taken_over = scalar(pg, R"sql(
SELECT count(DISTINCT identity) FROM flow_check.run WHERE bucket = $1 AND worker <> (
  SELECT worker FROM flow_check.run WHERE bucket = $1 ORDER BY id LIMIT 1))sql",
                                 name);
  report.check(taken_over == kHeld, "partition: the other worker took over " + std::to_string(taken_over) + " of " +
                                        std::to_string(kHeld) + " matters while the holder was cut off");
  report.check(overlaps == 0, "partition: " + std::to_string(overlaps) +
                                  " overlapping runs of one matter (the holder honours its stop token, so 0)");
}

}  // namespace flow_check
