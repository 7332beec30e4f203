// The five checks of flow_check, each on a bucket of its own with worker
// processes of its own: findings go to the Report, one line each.
#pragma once

#include <string>

namespace flow_check {

// The PostgreSQL and NATS URLs.
struct Servers {
  std::string postgres, nats;
};

// Prints each finding as one line and counts the failures.
class Report {
 public:
  // Prints "ok: <line>" or "FAILED: <line>".
  void check(bool ok, const std::string& line);
  int failures() const { return failures_; }

 private:
  int failures_ = 0;
};

// Each check by its name, in the order they run; a check that throws is a
// failure of its own (the caller reports it).
void check_global_concurrency(const Servers& s, Report& report);
void check_rate_limit(const Servers& s, Report& report);
void check_priority(const Servers& s, Report& report);
void check_retry_cap(const Servers& s, Report& report);
void check_fairness(const Servers& s, Report& report);

}  // namespace flow_check
