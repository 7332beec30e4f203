// Implementation of the integration-test plumbing (see harness.hpp).
#include "harness.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <nats/nats.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <random>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sstream>

extern char** environ;

namespace dmm_test {

namespace {

std::string env_or_empty(const char* name) {
  const char* value = std::getenv(name);
  return value ? std::string(value) : std::string();
}

std::string first_env(const char* preferred, const char* fallback) {
  std::string value = env_or_empty(preferred);
  return value.empty() ? env_or_empty(fallback) : value;
}

std::string millis(milliseconds d) { return std::to_string(d.count()) + " ms"; }

}  // namespace

// ------------------------------------------------------------------ servers

const Servers& servers() {
  static const Servers found{first_env("DMM_TEST_POSTGRES_URL", "DMM_POSTGRES_URL"),
                             first_env("DMM_TEST_NATS_URL", "DMM_NATS_URL")};
  if (found.postgres.empty() || found.nats.empty())
    FAIL(
        "no test PostgreSQL/NATS: run scripts/test, or scripts/dev-env up and source .dmm/env "
        "(DMM_TEST_POSTGRES_URL/DMM_TEST_NATS_URL or DMM_POSTGRES_URL/DMM_NATS_URL must be set)");
  return found;
}

std::string worker_binary() {
  std::string path = env_or_empty("DMM_TEST_WORKER");
  if (path.empty())
    FAIL("DMM_TEST_WORKER is not set: run the integration tests through ctest, or set it to the "
         "path of the dmm_test_worker binary");
  return path;
}

ScratchDatabase::ScratchDatabase(std::string_view prefix) : name_(unique_name(prefix)) {
  pqxx::nontransaction admin(pg());
  admin.exec("CREATE DATABASE " + name_);
  url_ = with_database(servers().postgres, name_);
}

ScratchDatabase::~ScratchDatabase() {
  try {
    pqxx::nontransaction admin(pg());
    admin.exec("DROP DATABASE IF EXISTS " + name_ + " WITH (FORCE)");
  } catch (const std::exception& e) {
    WARN("could not drop database " << name_ << ": " << e.what());
  }
}

std::string with_database(const std::string& url, const std::string& db) {
  auto scheme = url.find("://");
  if (scheme == std::string::npos) return url + " dbname=" + db;
  auto path = url.find('/', scheme + 3);
  auto query = url.find('?', scheme + 3);
  if (path == std::string::npos || (query != std::string::npos && path > query)) {
    std::string head = url.substr(0, query);
    std::string tail = query == std::string::npos ? "" : url.substr(query);
    return head + "/" + db + tail;
  }
  std::string tail = query == std::string::npos ? "" : url.substr(query);
  return url.substr(0, path) + "/" + db + tail;
}

std::string with_address(const std::string& url, const std::string& host, int port) {
  const auto scheme = url.find("://");
  if (scheme == std::string::npos) return url + " host=" + host + " port=" + std::to_string(port);
  const auto start = scheme + 3;
  const auto end = url.find_first_of("/?", start);
  const auto authority = url.substr(start, end == std::string::npos ? std::string::npos : end - start);
  const auto at = authority.rfind('@');
  const auto userinfo = at == std::string::npos ? "" : authority.substr(0, at + 1);
  return url.substr(0, start) + userinfo + host + ":" + std::to_string(port) +
         (end == std::string::npos ? "" : url.substr(end));
}

int closed_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  socklen_t len = sizeof addr;
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  ::close(fd);  // never listened: connections are refused
  return ntohs(addr.sin_port);
}

// ------------------------------------------------------------------ buckets

std::string unique_name(std::string_view prefix) {
  static std::mutex mutex;
  static std::mt19937_64 rng{std::random_device{}()};
  static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
  std::string name(prefix);
  name += '_';
  std::lock_guard lock(mutex);
  for (int i = 0; i < 10; ++i) name += alphabet[rng() % (sizeof alphabet - 1)];
  return name;
}

std::shared_ptr<spdlog::logger> test_logger() {
  static const std::shared_ptr<spdlog::logger> logger = [] {
    auto l = spdlog::stderr_color_mt("dmm-test");
    std::string level = env_or_empty("DMM_TEST_LOG_LEVEL");
    l->set_level(level.empty() ? spdlog::level::warn : spdlog::level::from_str(level));
    return l;
  }();
  return logger;
}

dmm::Bucket open_bucket(const std::string& name, const std::function<void(dmm::BucketOptions&)>& tweak) {
  dmm::BucketOptions options;
  options.name = name;
  options.postgres = servers().postgres;
  options.nats = servers().nats;
  options.token_grace = 500ms;
  options.logger = test_logger();
  if (tweak) tweak(options);
  return dmm::Bucket::open(std::move(options));
}

dmm::KindOptions fast_kind(int concurrency) {
  dmm::KindOptions options;
  options.concurrency = concurrency;
  options.lease_ttl = 3000ms;
  options.backoff = dmm::Backoff{.initial = 50ms, .max = 1000ms, .multiplier = 2.0, .jitter = 0.2};
  options.stop_grace = 2000ms;
  return options;
}

Runner::Runner(dmm::Bucket& bucket) : bucket_(bucket) {
  thread_ = std::thread([this] {
    try {
      bucket_.run();
    } catch (const std::exception& e) {
      std::lock_guard lock(mutex_);
      error_ = e.what();
    }
  });
}

Runner::~Runner() {
  if (!thread_.joinable()) return;
  bucket_.stop();
  thread_.join();
}

void Runner::stop() {
  if (thread_.joinable()) {
    bucket_.stop();
    thread_.join();
  }
  std::lock_guard lock(mutex_);
  if (!error_.empty()) FAIL("Bucket::run() threw: " << error_);
}

// ------------------------------------------------------------------ polling

void wait_until(const std::function<bool()>& pred, milliseconds timeout, const std::string& what,
                const std::function<std::string()>& describe) {
  const auto deadline = Clock::now() + timeout;
  while (!pred()) {
    if (Clock::now() >= deadline) {
      std::string detail = describe ? "\n" + describe() : std::string();
      FAIL("timed out after " << millis(timeout) << " waiting for: " << what << detail);
    }
    std::this_thread::sleep_for(20ms);
  }
}

void holds_for(const std::function<bool()>& pred, milliseconds duration, const std::string& what) {
  const auto deadline = Clock::now() + duration;
  do {
    if (!pred()) FAIL("no longer true: " << what);
    std::this_thread::sleep_for(20ms);
  } while (Clock::now() < deadline);
}

// --------------------------------------------------------------- PostgreSQL

pqxx::connection connect_pg(const std::string& url) { return pqxx::connection(url); }

pqxx::connection& pg() {
  thread_local std::unique_ptr<pqxx::connection> conn;
  if (!conn || !conn->is_open()) conn = std::make_unique<pqxx::connection>(servers().postgres);
  return *conn;
}

std::optional<MatterRow> query_matter(const std::string& bucket, const std::string& kind,
                                      const std::string& identity) {
  pqxx::nontransaction tx(pg());
  auto r = tx.exec_params(
      "SELECT id, phase, generation, materialized_generation, attempts, coalesce(last_error, ''), "
      "state::text, coalesce(lease_owner, ''), coalesce(lease_until > now(), false), "
      "due_at IS NOT NULL, updated_at::text "
      "FROM dmm.matter WHERE bucket = $1 AND kind = $2 AND identity = $3",
      bucket, kind, identity);
  if (r.empty()) return std::nullopt;
  const auto& row = r[0];
  MatterRow m;
  m.id = row[0].as<std::int64_t>();
  m.phase = row[1].as<std::string>();
  m.generation = row[2].as<std::int64_t>();
  m.materialized_generation = row[3].as<std::int64_t>();
  m.attempts = row[4].as<int>();
  m.last_error = row[5].as<std::string>();
  m.state = nlohmann::json::parse(row[6].as<std::string>());
  m.lease_owner = row[7].as<std::string>();
  m.lease_live = row[8].as<bool>();
  m.work_owed = row[9].as<bool>();
  m.updated_at = row[10].as<std::string>();
  return m;
}

std::string query_phase(const std::string& bucket, const std::string& kind, const std::string& identity) {
  auto m = query_matter(bucket, kind, identity);
  return m ? m->phase : "(absent)";
}

std::int64_t count_matters(const std::string& bucket, const std::string& kind, const std::string& where) {
  pqxx::nontransaction tx(pg());
  auto r = tx.exec_params("SELECT count(*) FROM dmm.matter WHERE bucket = $1 AND ($2 = '' OR kind = $2) AND (" +
                              where + ")",
                          bucket, kind);
  return r[0][0].as<std::int64_t>();
}

std::int64_t count_converged(const std::string& bucket, const std::string& kind) {
  return count_matters(bucket, kind, "phase = 'ready' AND materialized_generation = generation");
}

std::string stored_snapshot(const std::string& bucket) { return stored_snapshot(bucket, pg()); }

std::string stored_snapshot(const std::string& bucket, pqxx::connection& conn) {
  pqxx::nontransaction tx(conn);
  std::string out;
  for (const auto& r : tx.exec_params("SELECT kind, identity, state::text, generation, phase, materialized_generation, "
                                      "attempts, coalesce(last_error, '-') FROM dmm.matter WHERE bucket = $1 "
                                      "ORDER BY kind, identity",
                                      bucket))
    for (pqxx::row::size_type i = 0; i < r.size(); ++i) out += std::string(r[i].c_str()) + (i + 1 < r.size() ? " " : "\n");
  return out;
}

std::string describe_unconverged(const std::string& bucket, int limit) {
  pqxx::nontransaction tx(pg());
  auto r = tx.exec_params(
      "SELECT kind, identity, phase, generation, materialized_generation, attempts, "
      "coalesce(last_error, ''), coalesce(due_at::text, '-'), "
      "coalesce((SELECT k.kick_at FROM dmm.kick k WHERE k.matter_id = matter.id)::text, '-'), "
      "coalesce(lease_owner, '-'), coalesce(lease_until::text, '-'), now()::text "
      "FROM dmm.matter WHERE bucket = $1 AND NOT (phase = 'ready' AND materialized_generation = generation) "
      "ORDER BY kind, identity LIMIT $2",
      bucket, limit);
  std::ostringstream out;
  out << "not converged in bucket " << bucket << " (first " << limit << "):";
  for (const auto& row : r) {
    out << "\n  " << row[0].c_str() << "/" << row[1].c_str() << " phase=" << row[2].c_str()
        << " gen=" << row[3].c_str() << " mat_gen=" << row[4].c_str() << " attempts=" << row[5].c_str()
        << " error=" << row[6].c_str() << " due_at=" << row[7].c_str() << " kick_at=" << row[8].c_str()
        << " lease=" << row[9].c_str() << " until " << row[10].c_str() << " (now " << row[11].c_str() << ")";
  }
  return out.str();
}

// ---------------------------------------------------------------- JetStream

struct Nats::Impl {
  natsConnection* conn = nullptr;
  jsCtx* js = nullptr;
};

Nats::Nats(const std::string& url) : impl_(new Impl) {
  natsStatus s = natsConnection_ConnectTo(&impl_->conn, url.c_str());
  if (s == NATS_OK) s = natsConnection_JetStream(&impl_->js, impl_->conn, nullptr);
  if (s != NATS_OK) {
    std::string text = natsStatus_GetText(s);
    jsCtx_Destroy(impl_->js);
    natsConnection_Destroy(impl_->conn);
    delete impl_;
    FAIL("cannot connect to NATS at " << dmm::mask_url(url) << ": " << text);
  }
}

Nats::~Nats() {
  jsCtx_Destroy(impl_->js);
  natsConnection_Destroy(impl_->conn);
  delete impl_;
}

std::uint64_t Nats::stream_messages(const std::string& stream) {
  jsStreamInfo* info = nullptr;
  jsErrCode err = static_cast<jsErrCode>(0);
  natsStatus s = js_GetStreamInfo(&info, impl_->js, stream.c_str(), nullptr, &err);
  if (s != NATS_OK)
    FAIL("js_GetStreamInfo(" << stream << "): " << natsStatus_GetText(s) << " (jetstream error "
                             << static_cast<int>(err) << ")");
  std::uint64_t msgs = info->State.Msgs;
  jsStreamInfo_Destroy(info);
  return msgs;
}

void Nats::purge_stream(const std::string& stream) {
  jsErrCode err = static_cast<jsErrCode>(0);
  natsStatus s = js_PurgeStream(impl_->js, stream.c_str(), nullptr, &err);
  if (s != NATS_OK)
    FAIL("js_PurgeStream(" << stream << "): " << natsStatus_GetText(s) << " (jetstream error "
                           << static_cast<int>(err) << ")");
}

// ---------------------------------------------------------------- processes

Process::Process(const std::string& binary, const std::vector<std::string>& args) {
  int fds[2];
  REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
  std::vector<std::string> storage;
  storage.push_back(binary);
  storage.insert(storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& s : storage) argv.push_back(s.data());
  argv.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, defaults;
  sigemptyset(&none);
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGTERM);
  sigaddset(&defaults, SIGINT);
  sigaddset(&defaults, SIGPIPE);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  int rc = ::posix_spawn(&pid_, binary.c_str(), &actions, &attr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  ::close(fds[1]);
  out_ = fds[0];
  if (rc != 0) {
    ::close(out_);
    out_ = -1;
    pid_ = -1;
    FAIL("cannot start " << binary << ": " << std::strerror(rc));
  }
}

Process::~Process() {
  if (pid_ > 0 && !status_) {
    ::kill(pid_, SIGKILL);
    int st = 0;
    ::waitpid(pid_, &st, 0);
  }
  if (out_ >= 0) ::close(out_);
}

void Process::expect_line(const std::string& line, milliseconds timeout) {
  expect_line_where([&](const std::string& got) { return got == line; }, "'" + line + "'", timeout);
}

std::string Process::expect_line_containing(const std::string& part, milliseconds timeout) {
  return expect_line_where([&](const std::string& got) { return got.find(part) != std::string::npos; },
                           "a line containing '" + part + "'", timeout);
}

std::string Process::expect_line_where(const std::function<bool(const std::string&)>& match,
                                       const std::string& what, milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  const std::string line = what;
  for (;;) {
    auto nl = buffer_.find('\n');
    while (nl != std::string::npos) {
      std::string got = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      if (match(got)) return got;
      nl = buffer_.find('\n');
    }
    auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
    if (left <= 0ms) FAIL("process " << pid_ << " did not print " << line << " within " << millis(timeout));
    pollfd p{out_, POLLIN, 0};
    int n = ::poll(&p, 1, static_cast<int>(left.count()));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) continue;
    char chunk[512];
    ssize_t got = ::read(out_, chunk, sizeof chunk);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) FAIL("process " << pid_ << " closed its stdout before printing " << line);
    buffer_.append(chunk, static_cast<std::size_t>(got));
  }
}

void Process::kill(int signal) {
  if (pid_ > 0 && !status_) ::kill(pid_, signal);
}

std::optional<int> Process::wait(milliseconds timeout) {
  if (status_) return status_;
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    int st = 0;
    pid_t r = ::waitpid(pid_, &st, WNOHANG);
    if (r == pid_) {
      status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      return status_;
    }
    if (Clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(10ms);
  }
}

bool Process::running() { return !wait(0ms).has_value(); }

std::unique_ptr<Process> start_worker(const WorkerArgs& args) {
  std::vector<std::string> argv = {"--postgres",    servers().postgres,
                                   "--nats",        servers().nats,
                                   "--bucket",      args.bucket,
                                   "--kind",        args.type == "steps" ? "steps" : "probe",
                                   "--type",        args.type,
                                   "--concurrency", std::to_string(args.concurrency),
                                   "--lease-ms",    std::to_string(args.lease_ms),
                                   "--sleep-ms",    std::to_string(args.sleep_ms),
                                   "--stop-grace-ms", std::to_string(args.stop_grace_ms),
                                   "--worker-id",   args.worker_id};
  auto process = std::make_unique<Process>(worker_binary(), argv);
  process->expect_line("ready", 20s);
  return process;
}

// ---------------------------------------------------------------- recording

void Recorder::record(const std::string& identity, Entry entry) {
  std::lock_guard lock(mutex_);
  entries_[identity].push_back(std::move(entry));
}

std::vector<Recorder::Entry> Recorder::entries(const std::string& identity) const {
  std::lock_guard lock(mutex_);
  auto it = entries_.find(identity);
  return it == entries_.end() ? std::vector<Entry>{} : it->second;
}

std::size_t Recorder::count(const std::string& identity) const {
  std::lock_guard lock(mutex_);
  auto it = entries_.find(identity);
  return it == entries_.end() ? 0 : it->second.size();
}

std::size_t Recorder::total() const {
  std::lock_guard lock(mutex_);
  std::size_t n = 0;
  for (const auto& [_, v] : entries_) n += v.size();
  return n;
}

}  // namespace dmm_test
