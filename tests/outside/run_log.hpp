// RunLog: where flow_check's worker processes record their runs — a table of
// its own (flow_check.run) in the test PostgreSQL, so that the checker sees the
// runs of every process on one clock (PostgreSQL's clock_timestamp()).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <pqxx/pqxx>
#include <string>
#include <vector>

namespace flow_check {

class RunLog {
 public:
  // Creates schema flow_check and its table if missing. Called once by the
  // checker before any worker starts (concurrent CREATE IF NOT EXISTS races).
  static void create_table(pqxx::connection& conn);

  RunLog(std::string postgres, std::string bucket, std::string worker);

  // Records the start of a run (now, and the lease's start `leased_at`, an
  // ISO 8601 time, if given) and returns its id: ids follow the order of
  // starts across processes. Committed when it returns.
  std::int64_t start(const std::string& identity, const std::string& leased_at = "");
  // Records the end of run `id`.
  void end(std::int64_t id);

  const std::string& postgres() const { return postgres_; }
  const std::string& bucket() const { return bucket_; }

 private:
  // A connection of the pool for the length of one statement.
  std::unique_ptr<pqxx::connection> take();
  void give(std::unique_ptr<pqxx::connection> conn);

  const std::string postgres_;  // constant after construction
  const std::string bucket_;    // constant after construction
  const std::string worker_;    // constant after construction
  std::mutex mutex_;
  std::vector<std::unique_ptr<pqxx::connection>> idle_;  // guarded by mutex_
};

}  // namespace flow_check
