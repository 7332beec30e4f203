// The fault suite's loopback proxy (see proxy.hpp): one poll thread per link.
#include "proxy.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <memory>
#include <stdexcept>
#include <vector>

namespace dmm_faults {
namespace {

using Clock = std::chrono::steady_clock;
constexpr std::size_t kMaxQueued = 1 << 20;  // per direction: stop reading beyond it

// Closes with an RST instead of a FIN.
void reset(int fd) {
  const linger now{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &now, sizeof now);
  ::close(fd);
}

void nonblocking(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK); }

void nodelay(int fd) {
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

sockaddr_in loopback(const std::string& host, int port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  if (::inet_pton(AF_INET, host == "localhost" ? "127.0.0.1" : host.c_str(), &addr.sin_addr) != 1)
    throw std::invalid_argument("proxy: target host '" + host + "' is not an IPv4 address; give 127.0.0.1");
  return addr;
}

struct Chunk {
  Clock::time_point due;
  std::string data;
  std::size_t sent = 0;
};

// Every descriptor is close-on-exec: a worker forked meanwhile must not
// inherit a proxied socket, or closing (resetting) it here would not end the
// connection.

// One direction of a connection.
struct Pipe {
  int from = -1, to = -1;
  std::deque<Chunk> chunks;
  std::size_t queued = 0;
  Clock::time_point last_due{};

  // Writes what is due; false if `to` failed.
  bool flush(Clock::time_point now, std::atomic<std::int64_t>& bytes) {
    while (!chunks.empty() && chunks.front().due <= now) {
      auto& c = chunks.front();
      const auto n = ::send(to, c.data.data() + c.sent, c.data.size() - c.sent, MSG_NOSIGNAL);
      if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK;
      c.sent += static_cast<std::size_t>(n);
      bytes += n;
      if (c.sent < c.data.size()) return true;
      queued -= c.data.size();
      chunks.pop_front();
    }
    return true;
  }
};

struct Conn {
  int client, server;
  Pipe up{client, server, {}, 0, {}}, down{server, client, {}, 0, {}};
};

}  // namespace

Proxy::Proxy(std::string target_host, int target_port) : host_(std::move(target_host)), target_port_(target_port) {
  loopback(host_, target_port_);  // refuses a bad host now, not in the thread
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int one = 1;
  ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  auto addr = loopback("127.0.0.1", 0);
  socklen_t len = sizeof addr;
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(listen_fd_, 128) != 0 ||
      ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    ::close(listen_fd_);
    throw std::runtime_error(std::string("proxy: cannot listen on 127.0.0.1: ") + std::strerror(errno));
  }
  nonblocking(listen_fd_);
  port_ = ntohs(addr.sin_port);
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  thread_ = std::thread([this] { loop(); });
}

Proxy::~Proxy() {
  stopping_ = true;
  const std::uint64_t one = 1;
  (void)!::write(wake_fd_, &one, sizeof one);
  thread_.join();
  ::close(listen_fd_);
  ::close(wake_fd_);
}

void Proxy::freeze() { set(Mode::frozen); }
void Proxy::cut() { set(Mode::cut); }
void Proxy::slow(std::chrono::milliseconds min, std::chrono::milliseconds max) { set(Mode::slow, min, max); }
void Proxy::heal() { set(Mode::open); }

void Proxy::set(Mode mode, std::chrono::milliseconds min, std::chrono::milliseconds max) {
  {
    std::lock_guard lock(mu_);
    mode_ = mode;
    min_ = min;
    max_ = std::max(min, max);
  }
  const std::uint64_t one = 1;
  (void)!::write(wake_fd_, &one, sizeof one);
}

void Proxy::loop() {
  std::vector<std::unique_ptr<Conn>> conns;
  std::mt19937 rng{std::random_device{}()};
  const auto target = loopback(host_, target_port_);
  std::vector<pollfd> fds;
  while (!stopping_) {
    Mode mode;
    std::chrono::milliseconds min, max;
    {
      std::lock_guard lock(mu_);
      mode = mode_;
      min = min_;
      max = max_;
    }
    if (mode == Mode::cut) {
      for (auto& c : conns) {
        reset(c->client);
        reset(c->server);
      }
      conns.clear();
    }
    const auto now = Clock::now();
    fds.assign({{wake_fd_, POLLIN, 0}});
    int timeout = -1;
    if (mode != Mode::frozen) {
      fds.push_back({listen_fd_, POLLIN, 0});
      for (auto& c : conns) {
        short client = c->up.queued < kMaxQueued ? POLLIN : 0, server = c->down.queued < kMaxQueued ? POLLIN : 0;
        for (auto* p : {&c->up, &c->down}) {
          if (p->chunks.empty()) continue;
          const auto due = p->chunks.front().due;
          if (due <= now) (p == &c->up ? server : client) |= POLLOUT;
          else {
            const auto wait = std::chrono::ceil<std::chrono::milliseconds>(due - now).count();
            timeout = timeout < 0 ? static_cast<int>(wait) : std::min(timeout, static_cast<int>(wait));
          }
        }
        fds.push_back({c->client, client, 0});
        fds.push_back({c->server, server, 0});
      }
    }
    if (::poll(fds.data(), fds.size(), timeout) < 0 && errno != EINTR) return;
    if (fds[0].revents) {
      std::uint64_t n;
      (void)!::read(wake_fd_, &n, sizeof n);
    }
    if (fds.size() == 1) continue;  // frozen
    {
      std::lock_guard lock(mu_);
      if (mode_ != mode) continue;  // changed while polling: look again
    }
    if (fds[1].revents & POLLIN)
      while (true) {
        const int client = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (client < 0) break;
        if (mode == Mode::cut) {
          reset(client);
          continue;
        }
        const int server = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (::connect(server, reinterpret_cast<const sockaddr*>(&target), sizeof target) != 0) {
          ::close(server);
          reset(client);  // the server is down: the client sees it as refused
          continue;
        }
        nonblocking(server);
        nodelay(client);
        nodelay(server);
        conns.push_back(std::make_unique<Conn>(Conn{client, server}));
        ++connections_;
      }
    // fds[2 + 2i] is conns[i]'s client, fds[3 + 2i] its server (conns added
    // above are not in fds yet).
    const auto read_at = Clock::now();
    std::vector<bool> dead(conns.size(), false);
    for (std::size_t i = 0; i + 2 < fds.size() && i / 2 < dead.size(); i += 2) {
      auto& c = *conns[i / 2];
      for (auto* p : {&c.up, &c.down}) {
        const auto& pfd = fds[2 + i + (p == &c.up ? 0 : 1)];
        if (!(pfd.revents & (POLLIN | POLLHUP | POLLERR))) continue;
        char buf[65536];
        const auto n = ::recv(p->from, buf, sizeof buf, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
          dead[i / 2] = true;
          continue;
        }
        if (n < 0) continue;
        auto due = read_at;
        if (mode == Mode::slow)
          due += std::chrono::milliseconds(std::uniform_int_distribution<long>(min.count(), max.count())(rng));
        due = std::max(due, p->last_due);  // keep the order
        p->last_due = due;
        p->queued += static_cast<std::size_t>(n);
        p->chunks.push_back({due, std::string(buf, static_cast<std::size_t>(n)), 0});
      }
    }
    const auto write_at = Clock::now();
    for (std::size_t i = 0; i < dead.size(); ++i)
      if (!dead[i] && (!conns[i]->up.flush(write_at, bytes_) || !conns[i]->down.flush(write_at, bytes_)))
        dead[i] = true;
    // A connection one end closed is closed at the other (no RST): what was
    // still queued for it is dropped.
    for (std::size_t i = dead.size(); i-- > 0;)
      if (dead[i]) {
        ::close(conns[i]->client);
        ::close(conns[i]->server);
        conns.erase(conns.begin() + static_cast<std::ptrdiff_t>(i));
      }
  }
  for (auto& c : conns) {
    ::close(c->client);
    ::close(c->server);
  }
}

}  // namespace dmm_faults
