// The six checks of flow_check, each on a bucket of its own with worker
// processes of its own: findings go to the Report, one line each.
#pragma once

#include <chrono>
#include <cstdint>
#include <dmm/dmm.hpp>
#include <functional>
#include <pqxx/pqxx>
#include <string>

#include "workers.hpp"

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

// Shared by the checks:
// "outside-<prefix>-<random>": a bucket of the check's own.
std::string unique_bucket(const std::string& prefix);
// The bucket, with the kind(s) of `check` registered.
dmm::Bucket open_bucket(const Servers& s, const std::string& name, const std::string& check);
// Polls `done` every 20 ms until it holds, `limit` passes or a worker ends.
// Empty on success, else why not.
std::string wait_for(Workers& workers, std::chrono::milliseconds limit, const std::function<bool()>& done);
// The first column of the first row of `sql`, with $1 = bucket.
std::int64_t scalar(pqxx::connection& pg, const std::string& sql, const std::string& bucket);

// Each check by its name, in the order they run; a check that throws is a
// failure of its own (the caller reports it).
void check_global_concurrency(const Servers& s, Report& report);
void check_rate_limit(const Servers& s, Report& report);
void check_priority(const Servers& s, Report& report);
void check_retry_cap(const Servers& s, Report& report);
void check_fairness(const Servers& s, Report& report);
void check_partition(const Servers& s, Report& report);

}  // namespace flow_check
