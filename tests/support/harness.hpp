// Shared plumbing for the integration tests: where the servers are, buckets
// with test-sized timings, polling with deadlines, SQL views of dmm.matter,
// JetStream inspection and child worker processes.
//
// A test that needs PostgreSQL/NATS and finds none FAILS with a message
// saying how to start them; it never skips.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <pqxx/pqxx>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "dmm/dmm.hpp"

namespace dmm_test {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// ------------------------------------------------------------------ servers

struct Servers {
  std::string postgres;
  std::string nats;
};

// DMM_TEST_POSTGRES_URL / DMM_TEST_NATS_URL, else DMM_POSTGRES_URL /
// DMM_NATS_URL. FAILs the calling test when either is missing.
const Servers& servers();

// The path of the dmm_test_worker binary (DMM_TEST_WORKER); FAILs if unset.
std::string worker_binary();

// `url` pointing at database `db` instead (URL or key=value form).
std::string with_database(const std::string& url, const std::string& db);

// `url` pointing at host:port instead (URL or key=value form), e.g. a proxy.
std::string with_address(const std::string& url, const std::string& host, int port);

// A TCP port on 127.0.0.1 that nothing listens on (bound, then released).
int closed_port();

// A database of its own on the test PostgreSQL, created with a unique name
// and dropped (WITH FORCE) when this goes out of scope.
class ScratchDatabase {
 public:
  explicit ScratchDatabase(std::string_view prefix);
  ~ScratchDatabase();
  ScratchDatabase(const ScratchDatabase&) = delete;
  ScratchDatabase& operator=(const ScratchDatabase&) = delete;
  const std::string& url() const { return url_; }

 private:
  std::string name_, url_;
};

// ------------------------------------------------------------------ buckets

// "<prefix>_<random>": a valid, unused bucket (or database) name.
std::string unique_name(std::string_view prefix);

// Opens a bucket on the test servers with test-sized timings (token_grace
// 500 ms, quiet logger). `tweak` may change any option before open.
dmm::Bucket open_bucket(const std::string& name, const std::function<void(dmm::BucketOptions&)>& tweak = {});

// Kind options with test-sized timings: lease 3 s, backoff 50 ms..1 s,
// stop_grace 2 s.
dmm::KindOptions fast_kind(int concurrency = 4);

// The logger the test buckets use (level from DMM_TEST_LOG_LEVEL, default warn).
std::shared_ptr<spdlog::logger> test_logger();

// Runs bucket.run() on a thread; stops and joins on destruction (declare it
// after the bucket it runs).
class Runner {
 public:
  explicit Runner(dmm::Bucket& bucket);
  ~Runner();
  Runner(const Runner&) = delete;
  Runner& operator=(const Runner&) = delete;
  // Stops the bucket and joins; FAILs if run() threw.
  void stop();

 private:
  dmm::Bucket& bucket_;
  std::mutex mutex_;
  std::string error_;  // protected by mutex_
  std::thread thread_;
};

// ------------------------------------------------------------------ polling

// Polls `pred` every 20 ms until it holds; FAILs naming `what` (and the
// output of `describe`, if given) after `timeout`.
void wait_until(const std::function<bool()>& pred, milliseconds timeout, const std::string& what,
                const std::function<std::string()>& describe = {});

// Polls `pred` for `duration`; FAILs naming `what` as soon as it does not hold.
void holds_for(const std::function<bool()>& pred, milliseconds duration, const std::string& what);

// --------------------------------------------------------------- PostgreSQL

pqxx::connection connect_pg(const std::string& url);
// A connection to the test database owned by the calling thread.
pqxx::connection& pg();

struct MatterRow {
  std::int64_t id = 0;
  std::string phase;
  std::int64_t generation = 0;
  std::int64_t materialized_generation = 0;
  int attempts = 0;
  std::string last_error;
  nlohmann::json state;
  std::string lease_owner;
  bool lease_live = false;  // lease_until > now()
  bool work_owed = false;   // due_at IS NOT NULL
  std::string updated_at;
};

std::optional<MatterRow> query_matter(const std::string& bucket, const std::string& kind,
                                      const std::string& identity);
// The phase of a matter, or "(absent)" when there is no row.
std::string query_phase(const std::string& bucket, const std::string& kind, const std::string& identity);
// Rows of the bucket (and kind, if not empty) matching the SQL condition `where`.
std::int64_t count_matters(const std::string& bucket, const std::string& kind = "",
                           const std::string& where = "true");
// Rows that are ready with nothing owed: phase ready and materialized_generation = generation.
std::int64_t count_converged(const std::string& bucket, const std::string& kind);
// Everything stored for `bucket` (kind, identity, state, generation, phase,
// materialized generation, attempts, last error), one matter a line, in the
// database of `conn` (default: the test database): tests compare it before
// and after a bad call to show that nothing stored changed.
std::string stored_snapshot(const std::string& bucket);
std::string stored_snapshot(const std::string& bucket, pqxx::connection& conn);
// Up to `limit` rows of the bucket that are not converged, one per line.
std::string describe_unconverged(const std::string& bucket, int limit = 10);

// ---------------------------------------------------------------- JetStream

// A NATS connection with a JetStream context, for inspecting dmm's streams.
class Nats {
 public:
  explicit Nats(const std::string& url);
  ~Nats();
  Nats(const Nats&) = delete;
  Nats& operator=(const Nats&) = delete;

  // Messages currently held by `stream`.
  std::uint64_t stream_messages(const std::string& stream);
  void purge_stream(const std::string& stream);

 private:
  struct Impl;
  Impl* impl_;
};

// ---------------------------------------------------------------- processes

// A child process (posix_spawn) with its stdout on a pipe. The destructor
// SIGKILLs and reaps it if it is still running.
class Process {
 public:
  Process(const std::string& binary, const std::vector<std::string>& args);
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  // Reads the child's stdout until a line equal to `line`; FAILs on timeout or EOF.
  void expect_line(const std::string& line, milliseconds timeout);
  // Reads until a line containing `part` and returns it; FAILs on timeout or EOF.
  std::string expect_line_containing(const std::string& part, milliseconds timeout);
  void kill(int signal);
  // Waits for exit; returns the exit status (128 + signal if signalled), or
  // nullopt on timeout.
  std::optional<int> wait(milliseconds timeout);
  bool running();

 private:
  std::string expect_line_where(const std::function<bool(const std::string&)>& match, const std::string& what,
                                milliseconds timeout);

  pid_t pid_ = -1;
  int out_ = -1;
  std::string buffer_;
  std::optional<int> status_;
};

// Starts dmm_test_worker in work mode for the kind "probe" and waits for its
// "ready" line.
struct WorkerArgs {
  std::string bucket;
  std::string worker_id;
  int concurrency = 4;
  int lease_ms = 3000;
  int sleep_ms = 0;
  int stop_grace_ms = 3000;
  std::string type = "probe";  // the materializer: probe, or steps (StepsProbe, kind "steps")
};
std::unique_ptr<Process> start_worker(const WorkerArgs& args);

// A gate the test opens; materializations wait at it (arrive, then wait).
class Gate {
 public:
  void arrive() {
    std::lock_guard lock(mutex_);
    ++arrived_;
    cv_.notify_all();
  }
  int arrived() {
    std::lock_guard lock(mutex_);
    return arrived_;
  }
  void open() {
    std::lock_guard lock(mutex_);
    open_ = true;
    cv_.notify_all();
  }
  // Waits until open (true), or until the stop token fires or 20 s pass (false).
  bool wait(std::stop_token stop) {
    std::unique_lock lock(mutex_);
    const auto deadline = Clock::now() + 20s;
    while (!open_) {
      if (stop.stop_requested() || Clock::now() >= deadline) return false;
      cv_.wait_for(lock, 10ms);
    }
    return true;
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  int arrived_ = 0;    // protected by mutex_
  bool open_ = false;  // protected by mutex_
};

// ---------------------------------------------------------------- recording

// A thread-safe log of what materializations saw, per identity.
class Recorder {
 public:
  struct Entry {
    std::string value{};
    int attempt = 0;
    Clock::time_point started{};
    Clock::time_point finished{};
  };
  void record(const std::string& identity, Entry entry);
  std::vector<Entry> entries(const std::string& identity) const;
  std::size_t count(const std::string& identity) const;
  std::size_t total() const;

 private:
  mutable std::mutex mutex_;
  std::map<std::string, std::vector<Entry>> entries_;  // protected by mutex_
};

}  // namespace dmm_test
