// Starting, watching and stopping flow_check's worker processes.
#include "workers.hpp"

#include <spawn.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace flow_check {

namespace {

std::string self_path() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) throw std::runtime_error(std::string("cannot read /proc/self/exe: ") + std::strerror(errno));
  return std::string(buf, static_cast<std::size_t>(n));
}

}  // namespace

Workers::Workers(const std::string& check, const std::string& bucket, int count)
    : args_{self_path(), "worker", check, bucket, std::to_string(getpid())} {
  for (int i = 0; i < count; ++i) children_.push_back(spawn(i));
}

Workers::Child Workers::spawn(int index) {
  auto args = args_;
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  Child c;
  if (const int rc = posix_spawn(&c.pid, args[0].c_str(), nullptr, nullptr, argv.data(), environ); rc != 0)
    throw std::runtime_error("cannot start worker " + std::to_string(index + 1) + " of " + args_[2] + ": " +
                             std::strerror(rc));
  return c;
}

pid_t Workers::kill_and_replace(int index) {
  auto& c = children_.at(static_cast<std::size_t>(index));
  const pid_t killed = c.pid;
  if (!c.reaped) {
    kill(c.pid, SIGKILL);
    waitpid(c.pid, &c.status, 0);
  }
  c = spawn(index);
  return killed;
}

Workers::~Workers() {
  for (auto& c : children_) {
    if (c.reaped) continue;
    kill(c.pid, SIGKILL);
    waitpid(c.pid, &c.status, 0);
  }
}

bool Workers::reap(Child& c) {
  if (c.reaped) return true;
  if (waitpid(c.pid, &c.status, WNOHANG) == c.pid) c.reaped = true;
  return c.reaped;
}

std::string Workers::describe(const Child& c, int index) {
  std::string who = "worker " + std::to_string(index + 1) + " (pid " + std::to_string(c.pid) + ")";
  if (WIFEXITED(c.status)) return who + " exited with status " + std::to_string(WEXITSTATUS(c.status));
  if (WIFSIGNALED(c.status)) return who + " was killed by signal " + std::to_string(WTERMSIG(c.status));
  return who + " ended";
}

std::string Workers::ended() {
  std::string out;
  for (std::size_t i = 0; i < children_.size(); ++i)
    if (reap(children_[i])) out += (out.empty() ? "" : "; ") + describe(children_[i], static_cast<int>(i));
  return out;
}

std::string Workers::stop(std::chrono::milliseconds grace) {
  for (auto& c : children_)
    if (!reap(c)) kill(c.pid, SIGTERM);
  const auto deadline = std::chrono::steady_clock::now() + grace;
  std::string out;
  for (std::size_t i = 0; i < children_.size(); ++i) {
    auto& c = children_[i];
    while (!reap(c) && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    const int index = static_cast<int>(i);
    if (!c.reaped)
      out += (out.empty() ? "" : "; ") + std::string("worker ") + std::to_string(index + 1) + " (pid " +
             std::to_string(c.pid) + ") did not stop within " + std::to_string(grace.count()) + " ms of SIGTERM";
    else if (!WIFEXITED(c.status) || WEXITSTATUS(c.status) != 0)
      out += (out.empty() ? "" : "; ") + describe(c, index);
  }
  return out;
}

bool parent_is(pid_t parent) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  return getppid() == parent;  // the parent may have died before the line above
}

}  // namespace flow_check
