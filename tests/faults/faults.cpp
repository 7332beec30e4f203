// The fault suite's driver: runs scenarios of real worker processes
// (fault_worker) against real servers while a notifier changes thousands of
// matters and faults are injected, then proves the contract in SQL:
//   lost        identities whose last notified state was not stored, or not
//               materialized by a run that completed;
//   overlaps    pairs of runs of one identity that overlapped in time;
//   unconverged matters not ready at the last generation within the deadline
//               (plus leases left behind by a graceful stop).
// Ends with: faults: <scenarios> scenarios, <matters> matters, <kills> kills,
//            lost=<n> overlaps=<n> unconverged=<n>
// and exits non-zero unless all three are 0.
#include <arpa/inet.h>
#include <nats/nats.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "probe.hpp"
#include "proxy.hpp"
#include "steps_scenario.hpp"

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using dmm_test::Probe;

struct Settings {
  std::string profile = "short";
  std::string postgres, nats, dev_env, env_dir, worker, only, report;
  std::string mutation;  // --mutate: a switch of engine/testing.hpp the workers turn on
  std::string pooler;    // PgBouncer in session mode in front of `postgres` (DMM_TEST_POOLER_URL)
};

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// A child process (fault_worker), killed on destruction. With `core_dir` it
// runs there and may dump core (core_pattern "core" writes it into the
// working directory), so that a crash can be shown with a backtrace.
class Child {
 public:
  Child(const std::vector<std::string>& argv, const std::string& log, const std::string& core_dir = "") {
    pid_ = fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      FILE* out = std::fopen(log.c_str(), "a");
      if (out) {
        dup2(fileno(out), 1);
        dup2(fileno(out), 2);
      }
      if (!core_dir.empty() && chdir(core_dir.c_str()) == 0) {
        const rlimit unlimited{RLIM_INFINITY, RLIM_INFINITY};
        setrlimit(RLIMIT_CORE, &unlimited);
      }
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
  }
  ~Child() {
    if (alive()) {
      ::kill(pid_, SIGKILL);
      wait_exit(5s);
    }
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  void signal(int sig) { ::kill(pid_, sig); }
  bool alive() { return !status_ && !poll(); }
  // Exit status, or nullopt if still running after `timeout`.
  std::optional<int> wait_exit(std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    while (!poll() && Clock::now() < deadline) std::this_thread::sleep_for(10ms);
    return status_;
  }

 private:
  bool poll() {
    if (status_) return true;
    int st = 0;
    if (waitpid(pid_, &st, WNOHANG) != pid_) return false;
    status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return true;
  }
  pid_t pid_ = -1;
  std::optional<int> status_;
};

void run_command(const std::string& cmd) {
  if (std::system((cmd + " >/dev/null 2>&1").c_str()) != 0) throw std::runtime_error("command failed: " + cmd);
}

// JetStream stream operations the scenarios inject (purge, delete).
void stream_fault(const std::string& url, const std::string& stream, bool remove) {
  natsConnection* nc = nullptr;
  jsCtx* js = nullptr;
  if (natsConnection_ConnectTo(&nc, url.c_str()) != NATS_OK) throw std::runtime_error("cannot connect to NATS");
  natsConnection_JetStream(&js, nc, nullptr);
  jsErrCode jerr{};
  natsStatus s = remove ? js_DeleteStream(js, stream.c_str(), nullptr, &jerr)
                        : js_PurgeStream(js, stream.c_str(), nullptr, &jerr);
  jsCtx_Destroy(js);
  natsConnection_Destroy(nc);
  if (s != NATS_OK) throw std::runtime_error(std::string("stream operation failed: ") + natsStatus_GetText(s));
}

// The host and port of a single-server URL (scheme://[user@]host:port[/...]),
// and the URL with another port: how a worker is pointed at its proxy.
std::pair<std::size_t, std::size_t> port_span(const std::string& url) {
  const auto start = url.find("://");
  const auto end = std::min(url.find('/', start + 3), url.size());
  const auto at = url.rfind('@', end);
  const auto host = at != std::string::npos && at > start ? at + 1 : start + 3;
  const auto colon = url.rfind(':', end);
  if (start == std::string::npos || colon == std::string::npos || colon < host || url.find(',') != std::string::npos)
    throw std::invalid_argument("cannot proxy '" + url + "': give one server as scheme://host:port");
  return {colon + 1, end};
}
std::pair<std::string, int> host_port(const std::string& url) {
  const auto [port, end] = port_span(url);
  const auto start = url.find("://");
  const auto at = url.rfind('@', port);
  const auto host = at != std::string::npos && at > start ? at + 1 : start + 3;
  return {url.substr(host, port - 1 - host), std::stoi(url.substr(port, end - port))};
}
std::string with_port(const std::string& url, int port) {
  const auto [from, end] = port_span(url);
  return url.substr(0, from) + std::to_string(port) + url.substr(end);
}

struct Scenario {
  std::string name{};
  std::string what{};  // one line for the report
  int matters = 1000;
  int workers = 3;
  std::chrono::seconds duration{15};
  std::vector<std::string> worker_flags{};  // extra fault_worker flags
  int hot = 0;                            // identities notified in a storm
  // Called every `chaos_every` while the notifier runs.
  std::chrono::milliseconds chaos_every{0};
  std::function<void(class Run&)> chaos{};
  long terminal_every = 0;
  bool cluster = false;  // a three-node JetStream cluster of its own, R3 stream
  int global_concurrency = 0;  // given to the workers too: never more runs at once, no slot left held
  dmm::RateLimit rate{};        // likewise: never more starts in a window of rate.per than count + burst
  // Partitions (proxy.hpp): every worker reaches PostgreSQL and NATS through
  // proxies of its own; with notifier_proxied the driver's notifying bucket
  // reaches PostgreSQL through one too, and a thread notifies fresh matters
  // through it (each success must be stored, each error must say truly
  // whether it took effect).
  bool proxied = false;
  bool notifier_proxied = false;
  bool ignores_stop = false;  // materializers ignore the stop token: overlaps reported, not counted
  bool in_short = true;       // part of the short profile (any scenario runs with --only)
  bool pooled = false;  // the workers reach PostgreSQL through PgBouncer in session mode (DMM_TEST_POOLER_URL)
  bool steps = false;  // matters are 5-step actions, checked step by step (steps_scenario.hpp)
  int batch = 50;      // identities the notifier changes every 20 ms
};

struct Totals {
  int scenarios = 0, kills = 0, restarts = 0;
  long matters = 0, lost = 0, overlaps = 0, unconverged = 0;
};

class Run {
 public:
  Run(const Settings& settings, const Scenario& scenario, std::mt19937& rng)
      : s_(settings), sc_(scenario), rng_(rng), bucket_name_(scenario.name + "_" + std::to_string(rng() % 1000000)) {
    nats_url_ = s_.nats;
  }
  ~Run() {
    nodes_.clear();
    if (!cluster_dir_.empty()) std::filesystem::remove_all(cluster_dir_);
    std::error_code ec;
    std::filesystem::remove_all(std::filesystem::temp_directory_path() / "dmm-fault-cores" / bucket_name_, ec);
  }

  int kills = 0, restarts = 0, graceful_stops = 0, crashes = 0, over_limit = 0;
  int faults_injected = 0, injection_failures = 0;
  long leases_left = 0;

  // Partitions. A slot's links outlive the workers started in it.
  enum class Link { postgres, nats, both };
  struct Links {
    std::unique_ptr<dmm_test::Proxy> postgres, nats;
  };
  int random_slot() { return static_cast<int>(rng_() % workers_.size()); }
  // Freezes (or cuts) the link(s) of the worker in `slot`.
  void partition(int slot, Link which, bool cut) {
    auto& l = links_.at(slot);
    for (auto* p : {which != Link::nats ? l.postgres.get() : nullptr, which != Link::postgres ? l.nats.get() : nullptr})
      if (p) cut ? p->cut() : p->freeze();
    partitioned_.insert(slot);
    pqxx::connection c(s_.postgres);
    pqxx::nontransaction tx(c);
    partition_starts_.emplace_back(tx.exec1("SELECT clock_timestamp()::text")[0].as<std::string>(),
                                   workers_.at(slot).first);
  }
  // Every worker's PostgreSQL link delays each chunk by [min, max].
  void slow_postgres(std::chrono::milliseconds min, std::chrono::milliseconds max) {
    for (auto& [slot, l] : links_) l.postgres->slow(min, max);
    for (auto& [slot, l] : links_) partitioned_.insert(slot);
  }
  // Heals every link; a fault ends here, so work resumed is measured from
  // now: for one worker's partition, until that worker completes a run.
  void heal_all() {
    if (partitioned_.empty()) return;
    {
      pqxx::connection c(s_.postgres);
      pqxx::nontransaction tx(c);
      backlog_at_heal_ = std::max(backlog_at_heal_, tx.exec_params1("SELECT count(*) FROM dmm.matter WHERE bucket = $1 "
                                                                    "AND NOT (phase = 'ready' AND generation = "
                                                                    "materialized_generation)",
                                                                    bucket_name_)[0].as<long>());
    }
    for (auto& [slot, l] : links_) {
      l.postgres->heal();
      l.nats->heal();
    }
    const auto worker = partitioned_.size() == 1 ? workers_.at(*partitioned_.begin()).first : std::string();
    partitioned_.clear();
    mark_fault(worker);
  }
  // The notifier's link: frozen while a notify is in flight, then healed or
  // cut (which fails the calls that hang in it).
  void freeze_notifier() {
    notifier_proxy_->freeze();
    if (fresh_in_flight_) ++mid_notify_freezes_;
  }
  void end_notifier_freeze(bool cut) {
    if (cut) {
      notifier_proxy_->cut();
      std::this_thread::sleep_for(200ms);  // the calls in flight get their errors
    }
    notifier_proxy_->heal();
    mark_fault();
  }
  std::string postgres_through(const dmm_test::Proxy& proxy) const;

  void start_worker(int slot) {
    const auto id = bucket_name_ + "-w" + std::to_string(next_worker_++);
    auto postgres = s_.postgres, nats = nats_url_;
    if (sc_.pooled) {
      if (s_.pooler.empty())
        throw std::runtime_error("scenario " + sc_.name + " needs PgBouncer: DMM_TEST_POOLER_URL is not set (scripts/faults "
                                 "and scripts/test start one with dev-env up --pooler)");
      postgres = s_.pooler;
    }
    if (sc_.proxied) {
      auto& l = links_[slot];
      if (!l.postgres) {
        const auto [pg_host, pg_port] = host_port(s_.postgres);
        const auto [nats_host, nats_port] = host_port(nats_url_);
        l.postgres = std::make_unique<dmm_test::Proxy>(pg_host, pg_port);
        l.nats = std::make_unique<dmm_test::Proxy>(nats_host, nats_port);
      }
      postgres = postgres_through(*l.postgres);
      nats = with_port(nats_url_, l.nats->port());
    }
    std::vector<std::string> argv = {s_.worker,  "--postgres", postgres, "--nats",      nats,
                                     "--record-postgres", s_.postgres,
                                     "--bucket", bucket_name_, "--worker-id", id,          "--lease-ms",
                                     "2000",     "--concurrency", "8",      "--replicas", sc_.cluster ? "3" : "1"};
    for (const auto& f : sc_.worker_flags) argv.push_back(f);
    if (s_.mutation == "no-self-expiry") argv.insert(argv.end(), {"--no-self-expiry", "1"});
    const auto cores = core_dir(id);
    std::filesystem::create_directories(cores);
    workers_[slot] = {id, std::make_unique<Child>(argv, log_path(), cores.string())};
  }

  std::string log_path() const { return (std::filesystem::temp_directory_path() / (bucket_name_ + ".log")).string(); }
  // Where worker `id` runs, and dumps core if it crashes.
  std::filesystem::path core_dir(const std::string& id) const {
    return std::filesystem::temp_directory_path() / "dmm-fault-cores" / bucket_name_ / id;
  }
  // The crashing thread's backtrace from a worker's core, if it left one
  // (gdb is on this machine; without it, nothing is shown). The core is
  // deleted: they are large.
  void show_backtrace(const std::string& id) {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(core_dir(id), ec)) {
      if (entry.path().filename().string().rfind("core", 0) != 0) continue;
      const auto cmd = "gdb -batch -q -ex bt '" + s_.worker + "' '" + entry.path().string() + "' 2>/dev/null | grep -v '^\\[New LWP' | head -60";
      std::cerr << "    backtrace of the crash (" << entry.path().string() << "):\n";
      if (FILE* gdb = popen(cmd.c_str(), "r")) {
        char line[512];
        while (std::fgets(line, sizeof line, gdb)) std::cerr << "      " << line;
        pclose(gdb);
      }
      std::filesystem::remove(entry.path(), ec);
    }
  }

  void kill_random_worker() { kill_worker(static_cast<int>(rng_() % workers_.size())); }

  // A worker that exited without being told to (a crash, an abort, a fatal
  // error) fails the scenario: its unfinished runs would otherwise show up
  // only as overlaps. Reported with its status and last log lines, then
  // replaced so the scenario goes on.
  void replace_crashed_workers() {
    for (auto& [slot, w] : workers_) {
      auto& [id, child] = w;
      if (child->alive()) continue;
      const auto status = child->wait_exit(0ms).value_or(-1);
      std::cerr << "  worker " << id << " exited on its own with status " << status << " (signal "
                << (status > 128 ? status - 128 : 0) << "); its last log lines (" << log_path() << "):\n";
      std::ifstream log(log_path());
      std::deque<std::string> tail;
      for (std::string line; std::getline(log, line);)
        if (line.find("[" + id + "]") != std::string::npos) {
          tail.push_back(line.substr(0, 300));
          if (tail.size() > 8) tail.pop_front();
        }
      for (const auto& line : tail) std::cerr << "    " << line << "\n";
      show_backtrace(id);
      ++crashes;
      start_worker(slot);
    }
  }

  // Kills a live worker that holds a run unfinished for longer than the lease
  // (a hanging materialization kept alive by heartbeats), so its matters must
  // be taken over; throws if none shows up within 20 s.
  void kill_hanging_worker() {
    const auto deadline = Clock::now() + 20s;
    pqxx::connection c(s_.postgres);
    while (true) {
      std::vector<std::string> hanging;
      {
        pqxx::nontransaction tx(c);
        for (const auto& r : tx.exec_params("SELECT DISTINCT worker FROM dmm_test.runs WHERE bucket = $1 AND "
                                            "finished IS NULL AND started < clock_timestamp() - interval '2500 ms'",
                                            bucket_name_))
          hanging.push_back(r[0].as<std::string>());
      }
      for (auto& [slot, w] : workers_)
        if (w.second->alive() && std::find(hanging.begin(), hanging.end(), w.first) != hanging.end()) {
          kill_worker(slot);
          return;
        }
      if (Clock::now() > deadline) throw std::runtime_error("no live worker had a run hanging past its lease");
      std::this_thread::sleep_for(100ms);
    }
  }

  void kill_worker(int slot) {
    auto& [id, child] = workers_[slot];
    child->signal(SIGKILL);
    child->wait_exit(10s);
    // Runs the dead process left unfinished ended no later than now. A start
    // the dead worker had sent may still commit after this (its backend runs
    // the statement to the end): close_killed_runs() closes those at the end.
    pqxx::connection c(s_.postgres);
    pqxx::nontransaction tx(c);
    killed_.emplace_back(id, tx.exec1("SELECT clock_timestamp()::text")[0].as<std::string>());
    tx.exec_params("UPDATE dmm_test.runs SET finished = $3::timestamptz, outcome = 'killed' "
                   "WHERE bucket = $1 AND worker = $2 AND finished IS NULL",
                   bucket_name_, id, killed_.back().second);
    ++kills;
    start_worker(slot);
    mark_fault();
  }

  void stop_random_worker_gracefully() {
    const int slot = static_cast<int>(rng_() % workers_.size());
    auto& [id, child] = workers_[slot];
    child->signal(SIGTERM);
    auto status = child->wait_exit(20s);
    if (!status || *status != 0)
      std::cerr << "  worker " << id << " did not stop cleanly (status " << (status ? *status : -1) << ")\n";
    pqxx::connection c(s_.postgres);
    pqxx::nontransaction tx(c);
    const auto left = tx.exec_params1(
        "SELECT count(*) FROM dmm.matter WHERE bucket = $1 AND lease_owner = $2 AND lease_until > now()",
        bucket_name_, id)[0].as<long>();
    if (left) std::cerr << "  worker " << id << " left " << left << " lease(s) behind after a clean stop\n";
    leases_left += left;
    ++graceful_stops;
    start_worker(slot);
    mark_fault();
  }

  void dev_env(const std::string& args) {
    run_command(s_.dev_env + " " + args + " --dir " + s_.env_dir);
    ++restarts;
    mark_fault();
  }
  void stream(bool remove) {
    stream_fault(nats_url_, "DMM_" + bucket_name_, remove);
    ++restarts;
    mark_fault();
  }

  // Cluster scenario: kills one node, and brings it back at the next call.
  void toggle_cluster_node() {
    if (down_node_ < 0) {
      down_node_ = static_cast<int>(rng_() % nodes_.size());
      nodes_[down_node_]->signal(SIGKILL);
      nodes_[down_node_]->wait_exit(10s);
      ++kills;
    } else {
      start_node(down_node_);
      down_node_ = -1;
      ++restarts;
    }
    mark_fault();
  }

  // Remembers when a fault was injected (database clock), to measure how long
  // until materializations complete again.
  // With `worker`: until that worker completes a run.
  void mark_fault(const std::string& worker = "") {
    ++faults_injected;
    for (int attempt = 0; attempt < 50; ++attempt) {
      try {
        pqxx::connection c(s_.postgres);
        pqxx::nontransaction tx(c);
        fault_times_.emplace_back(tx.exec1("SELECT clock_timestamp()::text")[0].as<std::string>(), worker);
        return;
      } catch (const std::exception&) {
        std::this_thread::sleep_for(100ms);
      }
    }
  }

  // Seconds from each fault to the first materialization that started after
  // it and completed.
  std::vector<double> recovery_times(pqxx::transaction_base& tx) {
    std::vector<double> out;
    for (const auto& [t, worker] : fault_times_) {
      auto r = tx.exec_params1("SELECT extract(epoch FROM min(finished) - $2::timestamptz) FROM dmm_test.runs "
                               "WHERE bucket = $1 AND outcome = 'done' AND started >= $2::timestamptz "
                               "AND ($3 = '' OR worker = $3)",
                               bucket_name_, t, worker);
      if (!r[0].is_null()) out.push_back(r[0].as<double>());
    }
    std::sort(out.begin(), out.end());
    return out;
  }

  // Runs the scenario; adds its findings to `totals`.
  void execute(Totals& totals);

  // Every run of a SIGKILLed worker ended when it was killed (or when it was
  // recorded as started, if its start committed later). Returns how many runs
  // were closed only now.
  long close_killed_runs(pqxx::transaction_base& tx) {
    long closed = 0;
    for (const auto& [worker, at] : killed_)
      closed += tx.exec_params("UPDATE dmm_test.runs SET finished = greatest(started, $3::timestamptz), "
                               "outcome = 'killed' WHERE bucket = $1 AND worker = $2 AND finished IS NULL",
                               bucket_name_, worker, at)
                    .affected_rows();
    return closed;
  }

 private:
  void notify_loop(dmm::Bucket& bucket, std::atomic<bool>& running);
  void notify_fresh_loop(dmm::Bucket& bucket, std::atomic<bool>& running);
  // Fresh matters notified through a frozen link: checked against what each
  // call said. Returns the calls whose error said "nothing took effect" but
  // whose matters were stored (a misreport), and describes the rest.
  long check_fresh(pqxx::transaction_base& tx, std::string& text);
  void start_cluster();
  void start_node(int i);
  std::string nats_url_;
  std::vector<std::pair<std::string, std::string>> fault_times_;  // (database clock, worker or "")
  std::filesystem::path cluster_dir_;
  std::vector<int> client_ports_, route_ports_;
  std::vector<std::unique_ptr<Child>> nodes_;
  int down_node_ = -1;
  std::map<std::string, long> expected_;  // identity -> last notified seq; guarded by expected_mu_
  std::mutex expected_mu_;
  std::atomic<long> notify_retries_{0};

  const Settings& s_;
  const Scenario& sc_;
  std::mt19937& rng_;
  const std::string bucket_name_;
  int next_worker_ = 0;
  std::map<int, Links> links_;  // declared before workers_: workers stop first
  std::set<int> partitioned_;
  long backlog_at_heal_ = 0;
  std::vector<std::pair<std::string, std::string>> partition_starts_;  // (database clock, worker)  // the most matters not ready when a partition was healed
  std::unique_ptr<dmm_test::Proxy> notifier_proxy_;
  // The fresh notifier (notify_fresh_loop): the vectors and counts below the
  // atomics are guarded by expected_mu_.
  std::atomic<bool> fresh_in_flight_{false};
  std::atomic<int> mid_notify_freezes_{0};
  std::vector<std::string> fresh_ok_, fresh_none_, fresh_doubt_;
  long fresh_calls_ = 0, fresh_errors_ = 0;
  double longest_notify_s_ = 0;
  std::string first_error_;
  std::map<int, std::pair<std::string, std::unique_ptr<Child>>> workers_;
  std::vector<std::pair<std::string, std::string>> killed_;  // SIGKILLed worker -> when (database clock)
};

std::string Run::postgres_through(const dmm_test::Proxy& proxy) const { return with_port(s_.postgres, proxy.port()); }

int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

void Run::start_node(int i) {
  std::string routes;
  for (int j = 0; j < 3; ++j)
    if (j != i) routes += (routes.empty() ? "" : ",") + std::string("nats://127.0.0.1:") + std::to_string(route_ports_[j]);
  const auto node = "n" + std::to_string(i);
  nodes_[i] = std::make_unique<Child>(
      std::vector<std::string>{"/usr/sbin/nats-server", "-js", "-a", "127.0.0.1", "-p",
                               std::to_string(client_ports_[i]), "-n", node, "--cluster_name", bucket_name_,
                               "--cluster", "nats://127.0.0.1:" + std::to_string(route_ports_[i]), "--routes", routes,
                               "-sd", (cluster_dir_ / node).string()},
      (cluster_dir_ / (node + ".log")).string());
}

// Three JetStream nodes on loopback ports: how users run dmm past one machine.
void Run::start_cluster() {
  cluster_dir_ = std::filesystem::temp_directory_path() / (bucket_name_ + "-cluster");
  std::filesystem::create_directories(cluster_dir_);
  nodes_.resize(3);
  for (int i = 0; i < 3; ++i) {
    client_ports_.push_back(free_port());
    route_ports_.push_back(free_port());
  }
  for (int i = 0; i < 3; ++i) start_node(i);
  nats_url_.clear();
  for (int i = 0; i < 3; ++i)
    nats_url_ += (i ? "," : "") + std::string("nats://127.0.0.1:") + std::to_string(client_ports_[i]);
}

void Run::notify_loop(dmm::Bucket& bucket, std::atomic<bool>& running) {
  std::mt19937 rng(rng_());
  std::map<std::string, long> seq;
  // Calls `send` until it succeeds: while PostgreSQL is down, the same
  // absolute states again.
  auto retrying = [&](const auto& send) {
    while (true) {
      try {
        send();
        return;
      } catch (const std::exception&) {
        ++notify_retries_;
        std::this_thread::sleep_for(100ms);
      }
    }
  };
  auto notify = [&](const std::vector<Probe>& batch) {
    retrying([&] { sc_.steps ? fault_steps::notify_many(bucket, batch) : bucket.notify_many(batch); });
  };
  auto next = [&](const std::string& id) { return Probe{.id = id, .seq = ++seq[id]}; };
  auto name = [](int i) { return "m" + std::to_string(i); };
  // Besides the batches: single notifies from a few threads at once, which
  // dmm writes together (group commit, dmm/src/engine/notify_group.hpp), under the
  // same faults. Each thread owns its identities, so the last state of each
  // is known.
  constexpr int kSingleThreads = 3, kSingleIds = 20;
  std::vector<std::map<std::string, long>> single_seq(kSingleThreads);
  std::vector<std::jthread> singles;
  for (int t = 0; t < kSingleThreads; ++t)
    singles.emplace_back([&, t] {
      auto& seqs = single_seq[static_cast<std::size_t>(t)];
      auto one = [&](const std::string& id) {
        const Probe state{.id = id, .seq = ++seqs[id]};
        retrying([&] { sc_.steps ? fault_steps::notify(bucket, state) : bucket.notify(state); });
      };
      for (long k = 0; running; ++k) {
        one("s" + std::to_string(t) + "-" + std::to_string(k * 7 % kSingleIds));
        std::this_thread::sleep_for(5ms);
      }
      for (const auto& [id, n] : std::map<std::string, long>(seqs))  // never end on a terminal seq
        if (sc_.terminal_every && n % sc_.terminal_every == 0) one(id);
    });
  // Every matter exists from the start.
  std::vector<Probe> all;
  for (int i = 0; i < sc_.matters; ++i) all.push_back(next(name(i)));
  notify(all);
  while (running) {
    std::vector<Probe> batch;
    for (int i = 0; i < sc_.batch; ++i) batch.push_back(next(name(static_cast<int>(rng() % sc_.matters))));
    for (int i = 0; i < sc_.hot * 10; ++i) batch.push_back(next(name(i % sc_.hot)));
    notify(batch);
    std::this_thread::sleep_for(sc_.hot ? 2ms : 20ms);
  }
  // The last state of each identity must be materializable: never a terminal seq.
  std::vector<Probe> last;
  for (auto& [id, n] : seq)
    if (sc_.terminal_every && n % sc_.terminal_every == 0) last.push_back(next(id));
  if (!last.empty()) notify(last);
  singles.clear();  // joins: they stop with `running`
  for (const auto& seqs : single_seq) seq.insert(seqs.begin(), seqs.end());
  std::lock_guard lock(expected_mu_);
  expected_ = seq;
}

// Fresh matters, never notified again, one call after the other so that a
// freeze of the notifier's link catches one in flight: a notify of one
// (group commit) and a notify_many of five, alternately.
void Run::notify_fresh_loop(dmm::Bucket& bucket, std::atomic<bool>& running) {
  for (long k = 0; running; ++k) {
    std::vector<Probe> batch;
    for (int i = 0; i < (k % 2 ? 1 : 5); ++i) batch.push_back({.id = "f" + std::to_string(k) + "-" + std::to_string(i), .seq = 1});
    const auto t = Clock::now();
    fresh_in_flight_ = true;
    std::vector<std::string>* into = &fresh_ok_;
    std::string error;
    try {
      if (batch.size() == 1) bucket.notify(batch[0]);
      else bucket.notify_many(batch);
    } catch (const dmm::Error& e) {
      error = e.what();
      // ConnectionError says whether the call may have taken effect (errors.hpp).
      into = error.find("may or may not have taken effect") != std::string::npos ? &fresh_doubt_ : &fresh_none_;
    }
    fresh_in_flight_ = false;
    std::lock_guard lock(expected_mu_);
    ++fresh_calls_;
    longest_notify_s_ = std::max(longest_notify_s_, seconds_since(t));
    if (!error.empty() && fresh_errors_++ == 0) first_error_ = error;
    for (const auto& p : batch) into->push_back(p.id);
  }
}

long Run::check_fresh(pqxx::transaction_base& tx, std::string& text) {
  auto stored = [&](const std::vector<std::string>& ids) {
    std::set<std::string> found;
    for (const auto& r : tx.exec_params("SELECT identity FROM dmm.matter WHERE bucket = $1 AND identity LIKE 'f%'",
                                        bucket_name_))
      found.insert(r[0].as<std::string>());
    return std::count_if(ids.begin(), ids.end(), [&](const std::string& id) { return found.count(id) > 0; });
  };
  const long misreported = stored(fresh_none_), doubt_stored = stored(fresh_doubt_);
  if (misreported)
    std::cerr << "  " << misreported << " fresh matter(s) stored although their notify failed saying nothing took "
              << "effect (first error: " << first_error_ << ")\n";
  if (!first_error_.empty()) std::cerr << "  first notify error: " << first_error_.substr(0, 400) << "\n";
  char buf[400];
  std::snprintf(buf, sizeof buf,
                "; fresh notifier: %ld calls, %d freezes caught one in flight, longest call %.1fs, %ld errors (%zu "
                "matters said nothing took effect: %ld stored; %zu in doubt: %ld stored)",
                fresh_calls_, mid_notify_freezes_.load(), longest_notify_s_, fresh_errors_, fresh_none_.size(),
                misreported, fresh_doubt_.size(), doubt_stored);
  text += buf;
  return misreported;
}

void Run::execute(Totals& totals) {
  const auto t0 = Clock::now();
  std::cout << "scenario " << sc_.name << ": " << sc_.what << " (" << sc_.matters << " matters, " << sc_.workers
            << " workers, " << sc_.duration.count() << "s)" << std::endl;
  {
    pqxx::connection c(s_.postgres);
    dmm_test::ensure_runs_table(c);
    if (sc_.steps) fault_steps::ensure_tables(c);
  }
  if (sc_.cluster) start_cluster();
  auto notifier_postgres = s_.postgres;
  if (sc_.notifier_proxied) {
    const auto [host, port] = host_port(s_.postgres);
    notifier_proxy_ = std::make_unique<dmm_test::Proxy>(host, port);
    notifier_postgres = postgres_through(*notifier_proxy_);
  }
  // A new cluster needs a moment to elect its JetStream leader.
  const auto open_deadline = Clock::now() + 60s;
  auto open = [&] {
    while (true) {
      try {
        return dmm::Bucket::open({.name = bucket_name_,
                                  .postgres = notifier_postgres,
                                  .nats = nats_url_,
                                  .stream_replicas = sc_.cluster ? 3 : 1});
      } catch (const dmm::Error&) {
        if (Clock::now() > open_deadline) throw;
        std::this_thread::sleep_for(500ms);
      }
    }
  };
  auto bucket = open();
  if (sc_.steps)
    fault_steps::register_kind(bucket);
  else
    bucket.register_kind<Probe>("probe");
  for (int i = 0; i < sc_.workers; ++i) start_worker(i);
  const double setup_s = seconds_since(t0);

  std::atomic<bool> running{true};
  std::thread notifier([&] { notify_loop(bucket, running); });
  std::jthread fresh;
  if (sc_.notifier_proxied) fresh = std::jthread([&] { notify_fresh_loop(bucket, running); });
  const auto end = Clock::now() + sc_.duration;
  auto next_chaos = Clock::now() + sc_.chaos_every;
  while (Clock::now() < end) {
    std::this_thread::sleep_for(50ms);
    replace_crashed_workers();
    if (sc_.chaos && Clock::now() >= next_chaos) {
      try {
        sc_.chaos(*this);
      } catch (const std::exception& e) {
        // A fault that was not injected proves nothing: the scenario fails.
        std::cerr << "  fault injection failed: " << e.what() << "\n";
        ++injection_failures;
      }
      next_chaos = Clock::now() + sc_.chaos_every;
    }
  }
  heal_all();  // before the notifier stops: a frozen notify may be what it waits for
  if (notifier_proxy_) notifier_proxy_->heal();
  running = false;
  notifier.join();
  if (fresh.joinable()) fresh.join();
  replace_crashed_workers();
  if (down_node_ >= 0) toggle_cluster_node();
  // The fresh notifier's successes are expected like the others'.
  for (const auto& id : fresh_ok_) expected_[id] = 1;

  // Converge.
  const auto quiet = Clock::now();
  pqxx::connection c(s_.postgres);
  long unconverged = 0;
  const auto deadline = Clock::now() + 120s;
  while (true) {
    pqxx::nontransaction tx(c);
    const std::string settled =
        sc_.steps ? fault_steps::kSettled : "phase = 'ready' AND generation = materialized_generation";
    unconverged = tx.exec_params1("SELECT count(*) FROM dmm.matter WHERE bucket = $1 AND NOT (" + settled + ")",
                                  bucket_name_)[0].as<long>();
    if (unconverged == 0 || Clock::now() > deadline) break;
    std::this_thread::sleep_for(100ms);
  }
  const double converge_s = seconds_since(quiet);

  const auto checks_start = Clock::now();
  // Stop every worker cleanly: nothing may be left leased.
  for (auto& [slot, w] : workers_) w.second->signal(SIGTERM);
  for (auto& [slot, w] : workers_) {
    const auto status = w.second->wait_exit(20s);
    if (!status || *status != 0) {
      std::cerr << "  worker " << w.first << " did not stop cleanly (status " << (status ? *status : -1) << ")\n";
      show_backtrace(w.first);
      ++crashes;
    }
  }
  pqxx::nontransaction tx(c);
  leases_left += tx.exec_params1("SELECT count(*) FROM dmm.matter WHERE bucket = $1 AND lease_until > now()",
                                 bucket_name_)[0].as<long>();

  // Lost: the last notified seq must be stored and completed by a run.
  std::map<std::string, std::pair<long, long>> seen;  // identity -> (stored seq, max completed run seq)
  for (const auto& r : tx.exec_params("SELECT identity, (state->>'seq')::bigint FROM dmm.matter WHERE bucket = $1",
                                      bucket_name_))
    seen[r[0].as<std::string>()].first = r[1].as<long>();
  for (const auto& r : tx.exec_params("SELECT identity, max(seq) FROM dmm_test.runs WHERE bucket = $1 AND "
                                      "outcome IN ('done', 'rolled back') GROUP BY identity",
                                      bucket_name_))
    seen[r[0].as<std::string>()].second = r[1].as<long>();
  long lost = 0;
  for (const auto& [id, expected] : expected_) {
    const auto& [stored, materialized] = seen[id];
    if (stored != expected || materialized != expected) {
      if (lost < 5)
        std::cerr << "  lost: " << id << " notified seq " << expected << ", stored " << stored
                  << ", materialized " << materialized << "\n";
      ++lost;
    }
  }
  // A run overlaps if it started before an earlier-started run of its
  // identity ended. A run never recorded as finished (its worker was stopped
  // and is gone, so it cannot be running any more) lasts until now, the end of
  // the scenario: any later run of its identity overlaps it.
  const long closed_late = close_killed_runs(tx);
  const long unfinished =
      tx.exec_params1("SELECT count(*) FROM dmm_test.runs WHERE bucket = $1 AND finished IS NULL", bucket_name_)[0]
          .as<long>();
  for (const auto& r : tx.exec_params("SELECT worker, identity, seq, started::text FROM dmm_test.runs "
                                      "WHERE bucket = $1 AND finished IS NULL ORDER BY started LIMIT 5",
                                      bucket_name_))
    std::cerr << "  never finished: run of " << r[1].c_str() << " seq " << r[2].c_str() << " by "
              << r[0].c_str() << ", started " << r[3].c_str() << "\n";
  const long overlaps = tx.exec_params1(R"sql(
SELECT count(*) FROM (
  SELECT started, max(coalesce(finished, 'infinity')) OVER (PARTITION BY identity ORDER BY started, run_id
                                      ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS earlier_end
    FROM dmm_test.runs WHERE bucket = $1) r
 WHERE started < earlier_end)sql",
                                        bucket_name_)[0].as<long>();
  // With a global limit: the most runs in flight at once, from the runs'
  // intervals (an end sorts before a start at the same instant; a run never
  // finished counts as running to the end), and the slots left held after
  // every worker stopped (a clean stop gives them back, a killed worker's
  // lapse with its lease).
  std::string limit_text;
  if (sc_.global_concurrency > 0) {
    const long most = tx.exec_params1(R"sql(
SELECT coalesce(max(running), 0) FROM (
  SELECT sum(delta) OVER (ORDER BY at, delta, run_id ROWS UNBOUNDED PRECEDING) AS running FROM (
    SELECT started AS at, 1 AS delta, run_id FROM dmm_test.runs WHERE bucket = $1
    UNION ALL
    SELECT finished, -1, run_id FROM dmm_test.runs WHERE bucket = $1 AND finished IS NOT NULL) e) r)sql",
                                      bucket_name_)[0].as<long>();
    long held = 0;
    const auto slots_deadline = Clock::now() + 5s;
    while (true) {
      held = tx.exec_params1("SELECT count(*) FROM dmm.slot WHERE bucket = $1 AND held_until > now()",
                             bucket_name_)[0].as<long>();
      if (held == 0 || Clock::now() > slots_deadline) break;
      std::this_thread::sleep_for(100ms);
    }
    if (most > sc_.global_concurrency) {
      std::cerr << "  " << most << " runs at once, over global_concurrency " << sc_.global_concurrency << "\n";
      ++over_limit;
    }
    if (most < sc_.global_concurrency) {
      std::cerr << "  at most " << most << " runs at once: the " << sc_.global_concurrency
                << " slots were never all used\n";
      ++over_limit;
    }
    if (held > 0) {
      std::cerr << "  " << held << " global slot(s) still held after every worker stopped\n";
      ++over_limit;
    }
    limit_text = "; most runs at once " + std::to_string(most) + " of " + std::to_string(sc_.global_concurrency) +
                 ", slots held after the stop " + std::to_string(held);
  }
  // With a rate limit: the most leases of runs in any window of its period
  // (the limit counts a start when its matter is leased; the run starts
  // once an executor takes it, a moment later).
  if (sc_.rate.count > 0) {
    const long bound = sc_.rate.count + sc_.rate.burst;
    const auto window_us = std::to_string(sc_.rate.per.count() * 1000 - 1);  // [start, start + per)
    const long most = tx.exec_params1(R"sql(
SELECT coalesce(max(c), 0) FROM (
  SELECT count(*) OVER (ORDER BY leased RANGE BETWEEN CURRENT ROW AND interval ')sql" + window_us +
                                          R"sql( microseconds' FOLLOWING) AS c
    FROM dmm_test.runs WHERE bucket = $1 AND leased IS NOT NULL) w)sql",
                                      bucket_name_)[0].as<long>();
    if (most > bound) {
      std::cerr << "  " << most << " runs leased in one window of " << sc_.rate.per.count() << "ms, over count + burst "
                << bound << "\n";
      ++over_limit;
    }
    if (most < sc_.rate.count / 2) {
      std::cerr << "  at most " << most << " runs leased in a window of " << sc_.rate.per.count()
                << "ms: the rate was never used\n";
      ++over_limit;
    }
    limit_text += "; most runs leased in " + std::to_string(sc_.rate.per.count()) + "ms " + std::to_string(most) +
                  " of count + burst " + std::to_string(bound);
  }
  if (sc_.chaos && faults_injected == 0) {
    std::cerr << "  no fault was injected\n";
    ++injection_failures;
  }
  // A partition of a link that carried nothing proves nothing.
  std::string partition_text;
  if (!links_.empty()) partition_text = "; at most " + std::to_string(backlog_at_heal_) + " matters not ready at a heal";
  // How many runs a partition caught in flight that lasted over 100 ms: the
  // runs whose exclusion one worker's partition put to the test.
  if (!partition_starts_.empty()) {
    long caught = 0;
    for (const auto& [at, worker] : partition_starts_)
      caught += tx.exec_params1("SELECT count(*) FROM dmm_test.runs WHERE bucket = $1 AND worker = $2 AND started <= "
                                "$3::timestamptz AND coalesce(finished, 'infinity') > $3::timestamptz AND "
                                "coalesce(finished, 'infinity') - started > interval '100 ms'",
                                bucket_name_, worker, at)[0].as<long>();
    partition_text += "; " + std::to_string(partition_starts_.size()) + " one-worker partitions caught " +
                      std::to_string(caught) + " runs over 100 ms in flight";
  }
  for (const auto& [slot, l] : links_)
    for (const auto* p : {l.postgres.get(), l.nats.get()})
      if (p->connections() == 0) {
        std::cerr << "  a proxied link of worker slot " << slot << " carried no connection\n";
        ++injection_failures;
      }
  if (sc_.notifier_proxied) {
    lost += check_fresh(tx, partition_text);
    if (mid_notify_freezes_ == 0) {
      std::cerr << "  no freeze of the notifier's link caught a notify in flight\n";
      ++injection_failures;
    }
  }
  // Materializers that ignore the stop token: their overlaps are measured
  // and shown, not counted (docs/RELIABILITY.md, "Partitions").
  const long counted_overlaps = sc_.ignores_stop ? 0 : overlaps;
  const auto overlaps_text =
      sc_.ignores_stop ? std::to_string(overlaps) + " (reported, not counted: materializers ignore the stop token)"
                       : std::to_string(overlaps);
  const auto runs = tx.exec_params1("SELECT count(*) FROM dmm_test.runs WHERE bucket = $1", bucket_name_)[0].as<long>();
  unconverged += leases_left;
  unconverged += injection_failures;  // a scenario whose faults were not injected did not run
  unconverged += crashes;             // nor does one whose workers crashed
  unconverged += over_limit;          // nor one that broke or never reached its global limit
  if (sc_.steps) unconverged += fault_steps::check(tx, bucket_name_, expected_);  // nor one that broke Steps' contract
  const auto recovery = recovery_times(tx);
  std::string recovery_text = "-";
  if (!recovery.empty()) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "median %.2fs, max %.2fs over %zu faults", recovery[recovery.size() / 2],
                  recovery.back(), recovery.size());
    recovery_text = buf;
  }

  std::printf("  %s: %ld runs (%ld never finished, %ld of killed workers recorded after the kill), %d kills, %d graceful stops, %d crashes, %d server faults, %d faults "
              "injected (%d failed), %ld notify retries; work resumed after each fault: %s; converged %.1fs after the "
              "last fault; lost=%ld overlaps=%s unconverged=%ld (leases left %ld%s%s) [setup %.0fs, stop and "
              "checks %.0fs, all %.0fs]\n",
              sc_.name.c_str(), runs, unfinished, closed_late, kills, graceful_stops, crashes, restarts, faults_injected, injection_failures,
              notify_retries_.load(), recovery_text.c_str(), converge_s, lost, overlaps_text.c_str(), unconverged, leases_left, limit_text.c_str(), partition_text.c_str(), setup_s,
              seconds_since(checks_start), seconds_since(t0));
  if (!s_.report.empty()) {
    std::ofstream out(s_.report, std::ios::app);
    out << "| " << sc_.name << " | " << sc_.what << partition_text << " | " << expected_.size() << " | " << runs << " | " << kills
        << " | " << restarts + graceful_stops << " | " << recovery_text << " | " << std::fixed << std::setprecision(1)
        << converge_s << " s | "
        << lost << " | " << overlaps_text << " | " << unconverged << " |\n";
  }
  ++totals.scenarios;
  totals.matters += static_cast<long>(expected_.size());
  totals.kills += kills;
  totals.restarts += restarts;
  totals.lost += lost;
  totals.overlaps += counted_overlaps;
  totals.unconverged += unconverged;
}

// Chaos of the partition scenarios, called every 100 ms: after `gap`, starts
// partition n, ends it after `hold`, and again.
struct PartitionCycle {
  std::chrono::milliseconds hold, gap;
  std::function<void(Run&, int)> start, end;
  Clock::time_point next{};
  bool on = false;
  int n = 0;
  void operator()(Run& r) {
    const auto now = Clock::now();
    if (next == Clock::time_point{}) next = now + gap;
    if (now < next) return;
    if (!on) start(r, n);
    else end(r, n++);
    on = !on;
    next = now + (on ? hold : gap);
  }
};

// One random worker's link(s), frozen (even partitions) or cut (odd ones) if
// `alternate`, else always as `cut` says.
PartitionCycle one_worker(Run::Link link, std::chrono::milliseconds hold, std::chrono::milliseconds gap, bool cut,
                          bool alternate) {
  return {.hold = hold,
          .gap = gap,
          .start = [=](Run& r, int n) { r.partition(r.random_slot(), link, alternate ? n % 2 == 1 : cut); },
          .end = [](Run& r, int) { r.heal_all(); }};
}

std::vector<Scenario> scenarios(bool long_profile) {
  const int matters = long_profile ? 5000 : 1000;
  const auto duration = long_profile ? std::chrono::seconds(60) : std::chrono::seconds(12);
  std::vector<Scenario> all;
  all.push_back({.name = "kill9",
                 .what = "worker processes SIGKILLed at random moments and replaced",
                 .matters = matters,
                 .workers = 3,
                 .duration = duration,
                 .chaos_every = long_profile ? 2500ms : 2000ms,
                 .chaos = [](Run& r) { r.kill_random_worker(); }});
  all.push_back({.name = "pooler",
                 .what = "workers reach PostgreSQL through PgBouncer (session mode); workers SIGKILLed and "
                         "replaced, PostgreSQL restarted behind the pooler",
                 .matters = matters,
                 .workers = 3,
                 .duration = duration,
                 .chaos_every = duration / 4,
                 .chaos = [n = 0](Run& r) mutable {
                   if (n++ % 3 == 1)
                     r.dev_env("restart-pg fast");
                   else
                     r.kill_random_worker();
                 },
                 .pooled = true});
  all.push_back({.name = "nats",
                 .what = "nats-server stopped (SIGTERM) or killed (SIGKILL) and restarted on its file storage, "
                         "stream purged, stream deleted",
                 .matters = matters,
                 .duration = duration,
                 .chaos_every = duration / 5,
                 .chaos = [n = 0](Run& r) mutable {
                   switch (n++ % 4) {
                     case 0: r.dev_env("restart-nats term"); break;
                     case 1: r.stream(false); break;
                     case 2: r.dev_env("restart-nats kill"); break;
                     default: r.stream(true); break;
                   }
                 }});
  all.push_back({.name = "postgres",
                 .what = "PostgreSQL restarted mid-run, fast and immediate shutdown",
                 .matters = matters,
                 .duration = duration,
                 .chaos_every = duration / 3,
                 .chaos = [n = 0](Run& r) mutable { r.dev_env(n++ % 2 ? "restart-pg immediate" : "restart-pg fast"); }});
  all.push_back({.name = "misbehave",
                 .what = "materializers fail randomly, hang past their lease, throw terminal errors; a hanging "
                         "worker is killed",
                 .matters = matters,
                 .duration = duration,
                 .worker_flags = {"--fail-rate", "0.2", "--hang-rate", "0.002", "--hang-ms", "5000",
                                  "--terminal-every", "13"},
                 .chaos_every = duration / 3,
                 .chaos = [](Run& r) { r.kill_hanging_worker(); },
                 .terminal_every = 13});
  all.push_back({.name = "cluster",
                 .what = "three-node JetStream cluster (R3 stream), one node SIGKILLed and brought back",
                 .matters = matters,
                 .duration = duration,
                 .chaos_every = duration / 5,
                 .chaos = [](Run& r) { r.toggle_cluster_node(); },
                 .cluster = true});
  all.push_back({.name = "limits",
                 .what = "global_concurrency 5 across 3 workers, workers SIGKILLed at random moments and replaced",
                 .matters = matters,
                 .workers = 3,
                 .duration = duration,
                 .worker_flags = {"--global-concurrency", "5", "--work-ms", "5"},
                 .chaos_every = long_profile ? 2500ms : 2000ms,
                 .chaos = [](Run& r) { r.kill_random_worker(); },
                 .global_concurrency = 5});
  all.push_back({.name = "rate",
                 .what = "rate_limit 200 per 1s (burst 20) across 3 workers, workers SIGKILLed at random moments and "
                         "replaced",
                 .matters = matters,
                 .workers = 3,
                 .duration = duration,
                 .worker_flags = {"--rate-count", "200", "--rate-per-ms", "1000", "--rate-burst", "20"},
                 .chaos_every = long_profile ? 2500ms : 2000ms,
                 .chaos = [](Run& r) { r.kill_random_worker(); },
                 .rate = {.count = 200, .per = 1000ms, .burst = 20}});
  all.push_back({.name = "steps",
                 .what = "actions of 5 steps (dmm::Steps) whose steps fail and are retried, or fail for good and roll "
                         "back, some rollbacks failing once; workers SIGKILLed at random moments, PostgreSQL restarted",
                 .matters = matters,
                 .workers = 3,
                 .duration = duration,
                 .worker_flags = {"--type", "steps", "--work-ms", "3"},
                 .chaos_every = long_profile ? 2500ms : 2000ms,
                 .chaos = [n = 0](Run& r) mutable {
                   if (n++ % 4 == 3)
                     r.dev_env("restart-pg immediate");
                   else
                     r.kill_random_worker();
                 },
                 .steps = true,
                 .batch = 1});
  all.push_back({.name = "storm",
                 .what = "notify storm on 5 hot identities while they are materialized",
                 .matters = matters,
                 .duration = duration,
                 .worker_flags = {"--work-ms", "20"},
                 .hot = 5});
  all.push_back({.name = "sigterm",
                 .what = "workers stopped gracefully (SIGTERM) under load and replaced",
                 .matters = matters,
                 .duration = duration,
                 .worker_flags = {"--work-ms", "50"},
                 .chaos_every = long_profile ? 3000ms : 2500ms,
                 .chaos = [](Run& r) { r.stop_random_worker_gracefully(); }});

  // Partitions (docs/RELIABILITY.md, "Partitions"). Most runs take 10 ms, two
  // in a thousand 5 s (past the 2 s lease TTL of start_worker), so that
  // partitions catch runs that outlive the lease.
  using Link = Run::Link;
  const std::vector<std::string> mixed = {"--work-ms", "10", "--hang-rate", "0.002", "--hang-ms", "5000"};
  auto partition = [&](std::string name, std::string what, PartitionCycle cycle) {
    Scenario sc{.name = std::move(name), .what = std::move(what), .matters = matters, .duration = duration};
    sc.worker_flags = mixed;
    sc.chaos_every = 100ms;
    sc.chaos = std::move(cycle);
    sc.proxied = true;
    sc.in_short = false;
    return sc;
  };
  all.push_back(partition("pg-brief",
                          "one worker's PostgreSQL link frozen for 1 s (half the lease TTL) every 3 s, NATS reachable",
                          one_worker(Link::postgres, 1000ms, 2000ms, false, false)));
  all.push_back(partition("pg-partition",
                          "one worker's PostgreSQL link frozen or cut (alternately) for 6 s (3 lease TTLs), healed "
                          "for 4 s; NATS reachable; materializers honour the stop token",
                          one_worker(Link::postgres, 6000ms, long_profile ? 4000ms : 2000ms, false, true)));
  all.back().in_short = true;
  all.push_back(partition("pg-partition-ignore",
                          "as pg-partition, with materializers that ignore the stop token",
                          one_worker(Link::postgres, 6000ms, long_profile ? 4000ms : 2000ms, false, true)));
  all.back().worker_flags.insert(all.back().worker_flags.end(), {"--ignore-stop", "1"});
  all.back().ignores_stop = true;
  all.push_back(partition("nats-partition",
                          "one worker's NATS link frozen or cut (alternately) for 5 s, healed for 3 s; PostgreSQL "
                          "reachable",
                          one_worker(Link::nats, 5000ms, 3000ms, false, true)));
  all.push_back(partition("flap", "both links of a random worker cut for 2 s, healed for 2 s, again",
                          one_worker(Link::both, 2000ms, 2000ms, true, false)));
  all.push_back(partition("pg-slow",
                          "every worker's PostgreSQL link delays each chunk by 20-200 ms for half the run, then healed",
                          {.hold = duration / 2,
                           .gap = 2000ms,
                           .start = [](Run& r, int) { r.slow_postgres(20ms, 200ms); },
                           .end = [](Run& r, int) { r.heal_all(); }}));
  all.push_back(partition("notify-freeze",
                          "the notifier's PostgreSQL link frozen for 3 s while a notify is in flight, then healed or "
                          "cut (alternately)",
                          {.hold = 3000ms,
                           .gap = 2000ms,
                           .start = [](Run& r, int) { r.freeze_notifier(); },
                           .end = [](Run& r, int n) { r.end_notifier_freeze(n % 2 == 1); }}));
  all.back().proxied = false;
  all.back().notifier_proxied = true;
  return all;
}

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

}  // namespace

int main(int argc, char** argv) {
  Settings s;
  s.postgres = env_or("DMM_TEST_POSTGRES_URL", env_or("DMM_POSTGRES_URL", ""));
  s.nats = env_or("DMM_TEST_NATS_URL", env_or("DMM_NATS_URL", ""));
  s.dev_env = env_or("DMM_TEST_DEV_ENV", "");
  s.env_dir = env_or("DMM_TEST_ENV_DIR", "");
  s.pooler = env_or("DMM_TEST_POOLER_URL", "");
  // Absolute: workers run in a directory of their own (core dumps).
  s.worker = std::filesystem::absolute(std::filesystem::path(argv[0]).parent_path() / "fault_worker").string();
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument("missing value for " + a);
      return argv[++i];
    };
    if (a == "--long") s.profile = "long";
    else if (a == "--short") s.profile = "short";
    else if (a == "--only") s.only = value();
    else if (a == "--report") s.report = value();
    else if (a == "--mutate") s.mutation = value();
    else {
      std::cerr << "usage: faults [--short|--long] [--only SCENARIO[,SCENARIO...]] [--report FILE] "
                   "[--mutate no-self-expiry]\n"
                   "servers from DMM_TEST_POSTGRES_URL, DMM_TEST_NATS_URL; restarts through DMM_TEST_DEV_ENV "
                   "--dir DMM_TEST_ENV_DIR (scripts/faults sets them all)\n";
      return 2;
    }
  }
  if (s.postgres.empty() || s.nats.empty() || s.dev_env.empty() || s.env_dir.empty()) {
    std::cerr << "faults: no servers: run scripts/faults (it starts private ones), or set DMM_TEST_POSTGRES_URL, "
                 "DMM_TEST_NATS_URL, DMM_TEST_DEV_ENV and DMM_TEST_ENV_DIR\n";
    return 2;
  }
  if (!s.mutation.empty() && s.mutation != "no-self-expiry") {
    std::cerr << "faults: unknown mutation '" << s.mutation << "'; the one there is: no-self-expiry\n";
    return 2;
  }
  if (!s.mutation.empty())
    std::cout << "mutation " << s.mutation << ": the workers run without self-expiry; the partition scenarios "
                 "should now find overlaps (docs/RELIABILITY.md, \"Partitions\")" << std::endl;
  spdlog::set_level(spdlog::level::err);
  std::mt19937 rng{std::random_device{}()};
  Totals totals;
  for (const auto& sc : scenarios(s.profile == "long")) {
    const bool named = ("," + s.only + ",").find("," + sc.name + ",") != std::string::npos;  // --only a,b
    if (!s.only.empty() ? !named : !(s.profile == "long" || sc.in_short)) continue;
    Run run(s, sc, rng);
    try {
      run.execute(totals);
    } catch (const std::exception& e) {
      std::cerr << "scenario " << sc.name << " could not run: " << e.what() << "\n";
      ++totals.scenarios;
      ++totals.unconverged;
    }
  }
  std::printf("faults: %d scenarios, %ld matters, %d kills, lost=%ld overlaps=%ld unconverged=%ld\n",
              totals.scenarios, totals.matters, totals.kills, totals.lost, totals.overlaps, totals.unconverged);
  return totals.lost == 0 && totals.overlaps == 0 && totals.unconverged == 0 ? 0 : 1;
}
