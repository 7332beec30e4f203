// Workers: child processes of flow_check itself (`flow_check worker <check>
// <bucket> <parent pid>`), each a worker process of one bucket, stopped with
// SIGTERM as a supervisor stops one.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

namespace flow_check {

class Workers {
 public:
  // Starts `count` workers of `check` on `bucket`; they inherit the
  // environment (the server URLs). Throws std::runtime_error if one cannot
  // be started.
  Workers(const std::string& check, const std::string& bucket, int count);
  // Kills (SIGKILL) and reaps any worker still running.
  ~Workers();
  Workers(const Workers&) = delete;
  Workers& operator=(const Workers&) = delete;

  // Empty while every worker runs; else which one ended, and how.
  std::string ended();
  // SIGTERM to each, then waits up to `grace` for all to exit. Empty if each
  // exited with status 0; else what went wrong, per worker.
  std::string stop(std::chrono::milliseconds grace);

  int count() const { return static_cast<int>(children_.size()); }
  pid_t pid(int index) const { return children_.at(static_cast<std::size_t>(index)).pid; }
  // SIGKILLs worker `index`, reaps it and starts a new one in its place;
  // returns the killed process's pid.
  pid_t kill_and_replace(int index);

 private:
  struct Child {
    pid_t pid = -1;
    bool reaped = false;
    int status = 0;  // from waitpid, once reaped
  };
  // Reaps `c` if it has exited; true if it is reaped.
  static bool reap(Child& c);
  static std::string describe(const Child& c, int index);
  Child spawn(int index);

  std::vector<std::string> args_;  // constant after construction: argv of every worker
  std::vector<Child> children_;
};

// Called first in a worker: the kernel kills it (SIGKILL) when its parent
// dies (PR_SET_PDEATHSIG), so no worker outlives a killed check. False if
// `parent` is already gone.
bool parent_is(pid_t parent);

}  // namespace flow_check
