// A child process of the benchmark (a dmm worker), with its stdout on a pipe.
#pragma once

#include <string>
#include <sys/types.h>
#include <vector>

namespace bench {

class Child {
 public:
  // Starts `argv[0]` with `argv`; its stdout is readable with read_line().
  explicit Child(const std::vector<std::string>& argv);
  ~Child();  // SIGKILL if still running
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  // The next line of the child's stdout (without '\n'); throws at EOF.
  std::string read_line();
  // SIGTERM, then waits; returns the exit status (as waitpid's).
  int stop();
  // VmRSS and VmHWM of the child, in KiB (from /proc/<pid>/status).
  long rss_kib() const;
  long hwm_kib() const;
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  int out_ = -1;
  std::string buffer_;
};

}  // namespace bench
