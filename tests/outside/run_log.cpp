// The run table of flow_check and the recording its materializers do.
#include "run_log.hpp"

#include <utility>

namespace flow_check {

void RunLog::create_table(pqxx::connection& conn) {
  pqxx::nontransaction tx(conn);
  tx.exec(R"sql(
CREATE SCHEMA IF NOT EXISTS flow_check;
CREATE TABLE IF NOT EXISTS flow_check.run (
  id bigserial PRIMARY KEY,
  bucket text NOT NULL,
  identity text NOT NULL,
  worker text NOT NULL,
  leased_at timestamptz,
  started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  ended_at timestamptz);
CREATE INDEX IF NOT EXISTS run_bucket ON flow_check.run (bucket, id);)sql");
}

RunLog::RunLog(std::string postgres, std::string bucket, std::string worker)
    : postgres_(std::move(postgres)), bucket_(std::move(bucket)), worker_(std::move(worker)) {}

std::int64_t RunLog::start(const std::string& identity, const std::string& leased_at) {
  auto conn = take();
  pqxx::nontransaction tx(*conn);
  const auto id = tx.exec_params1(
                        "INSERT INTO flow_check.run (bucket, identity, worker, leased_at) "
                        "VALUES ($1, $2, $3, nullif($4, '')::timestamptz) RETURNING id",
                        bucket_, identity, worker_, leased_at)[0]
                      .as<std::int64_t>();
  give(std::move(conn));
  return id;
}

void RunLog::end(std::int64_t id) {
  auto conn = take();
  pqxx::nontransaction tx(*conn);
  tx.exec_params("UPDATE flow_check.run SET ended_at = clock_timestamp() WHERE id = $1", id);
  give(std::move(conn));
}

std::unique_ptr<pqxx::connection> RunLog::take() {
  {
    std::lock_guard lock(mutex_);
    if (!idle_.empty()) {
      auto conn = std::move(idle_.back());
      idle_.pop_back();
      return conn;
    }
  }
  auto conn = std::make_unique<pqxx::connection>(postgres_);
  // A commit is visible at once either way; the checker needs no durability.
  pqxx::nontransaction(*conn).exec("SET synchronous_commit = off");
  return conn;
}

void RunLog::give(std::unique_ptr<pqxx::connection> conn) {
  std::lock_guard lock(mutex_);
  idle_.push_back(std::move(conn));
}

}  // namespace flow_check
