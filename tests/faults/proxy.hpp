// Proxy: a TCP proxy on loopback between one client process and one server
// (PostgreSQL or nats-server), through which the fault suite partitions a
// link: freeze (connections hang, nothing passes, nothing is reset), cut
// (every connection reset, new ones too, until healed), slow (every chunk
// delayed) and heal.
//
// Why a proxy of our own and not socat (docs/RELIABILITY.md, "Partitions"):
// socat cannot delay data, and a SIGSTOPped socat freezes every link it
// serves at once; one proxy per link, in the driver, is switched per link
// and reports how many connections it carried, so a partition that touched
// no traffic fails its scenario instead of proving nothing. The machines this
// runs on have no netem qdisc and no iptables/nft to drop packets with.
//
// What a freeze is and is not: the proxy stops accepting, reading and writing,
// so no byte passes and no RST is sent; but the kernel still acknowledges
// what a client sends until the proxy's receive buffer is full (it also
// answers TCP keepalive probes and completes the handshake of new
// connections). A client sees what it would see for the first minutes of a
// real partition: writes succeed, replies never come. TCP_USER_TIMEOUT and
// keepalives, which need unacknowledged data or unanswered probes, do not
// fire here; only a client's own clock notices.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <random>
#include <string>
#include <thread>

namespace dmm_faults {

class Proxy {
 public:
  // Listens on 127.0.0.1 (a free port) and forwards each connection to
  // target_host:target_port. Throws if it cannot listen.
  Proxy(std::string target_host, int target_port);
  ~Proxy();
  Proxy(const Proxy&) = delete;
  Proxy& operator=(const Proxy&) = delete;

  int port() const { return port_; }

  // Connections hang: nothing is accepted, read or written; none is reset.
  void freeze();
  // Every connection is reset (SO_LINGER 0: an RST to both ends), and every
  // new one at once, until heal().
  void cut();
  // Every chunk of data, both ways, is delayed by a time drawn from
  // [min, max] (order is kept).
  void slow(std::chrono::milliseconds min, std::chrono::milliseconds max);
  // Back to forwarding at once; what a freeze held back flows on.
  void heal();

  // Connections accepted and forwarded so far (not those reset while cut).
  std::int64_t connections() const { return connections_.load(); }
  std::int64_t bytes() const { return bytes_.load(); }

 private:
  enum class Mode { open, frozen, cut, slow };
  void set(Mode mode, std::chrono::milliseconds min = {}, std::chrono::milliseconds max = {});
  void loop();

  const std::string host_;
  const int target_port_;
  int listen_fd_ = -1;
  int wake_fd_ = -1;  // eventfd: the mode changed, or the proxy stops
  int port_ = 0;
  std::atomic<std::int64_t> connections_{0}, bytes_{0};
  std::atomic<bool> stopping_{false};

  std::mutex mu_;
  Mode mode_ = Mode::open;               // guarded by mu_
  std::chrono::milliseconds min_{}, max_{};  // guarded by mu_: the delay while slow

  std::thread thread_;  // last: starts after everything above exists
};

}  // namespace dmm_faults
