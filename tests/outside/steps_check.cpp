// steps_check: dmm::Steps' first promise (docs/DESIGN.md "Steps": a
// completed step never runs again for its generation) checked from the
// outside, by a program built against the installed package. It runs worker
// processes of itself on a bucket of its own, each working a kind of
// 5-step actions whose steps append "<pid> <identity> <generation> <step>
// start|end" to a run log of its own (one file, O_APPEND, one write(2) a
// line: the lines of all processes in one order, and a SIGKILL loses none
// that was written). It SIGKILLs workers at random points, starts new ones,
// and checks from the log alone that:
//   - in each action, a step never starts after a later step started;
//   - a step starts again only after a start of it by a process that was
//     killed (it may not have been recorded as done);
//   - some kill interrupted a step (else nothing was proved);
// and, from dmm's public views, that every action completed (ready, its
// progress done, each step's end in the log).
//
//   steps_check [--postgres URL] [--nats URL]
// URLs default to DMM_TEST_POSTGRES_URL / DMM_TEST_NATS_URL, then
// DMM_POSTGRES_URL / DMM_NATS_URL. Exit status 1 if a check failed, 2 if it
// cannot run.
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <dmm/dmm.hpp>
#include <dmm/steps.hpp>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "workers.hpp"

namespace steps_check {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using flow_check::parent_is;
using flow_check::Workers;

constexpr int kActions = 60;
constexpr int kWorkers = 2;
constexpr int kKills = 10;
const char* const kStepNames[] = {"fetch", "configure", "start-new", "health-check", "stop-old"};
constexpr int kSteps = 5;

std::string first_env(const char* a, const char* b) {
  for (const char* name : {a, b})
    if (const char* v = std::getenv(name); v && *v) return v;
  return "";
}

// The run log of a bucket: where every process of this program finds it.
std::string log_path(const std::string& bucket) {
  return (std::filesystem::temp_directory_path() / (bucket + ".steps.log")).string();
}

// Appends one line per write(2) to the run log (O_APPEND: lines of several
// processes never interleave, and each is in the file once write returns).
class RunLog {
 public:
  explicit RunLog(const std::string& path)
      : fd_(::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644)) {
    if (fd_ < 0) throw std::runtime_error("cannot open the run log " + path + ": " + std::strerror(errno));
  }
  ~RunLog() { ::close(fd_); }
  RunLog(const RunLog&) = delete;
  RunLog& operator=(const RunLog&) = delete;

  void record(const std::string& identity, std::int64_t generation, int step, const char* event) {
    const auto line = std::to_string(getpid()) + " " + identity + " " + std::to_string(generation) + " " +
                      std::to_string(step) + " " + event + "\n";
    if (::write(fd_, line.data(), line.size()) != static_cast<ssize_t>(line.size()))
      throw std::runtime_error(std::string("cannot append to the run log: ") + std::strerror(errno));
  }

 private:
  const int fd_;
};

// A rollout of five steps, each taking `work_ms`, recorded in the run log.
struct Rollout {
  std::string id;
  int work_ms = 0;
  dmm::StepProgress progress{};

  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context& ctx) {
    auto& log = ctx.service<RunLog>();
    dmm::Steps steps(ctx, *this, progress);
    for (int i = 1; i <= kSteps; ++i)
      steps.step(kStepNames[i - 1], [&, i] {
        log.record(id, ctx.generation(), i, "start");
        std::this_thread::sleep_for(std::chrono::milliseconds(work_ms));
        log.record(id, ctx.generation(), i, "end");
      });
    return steps.run();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Rollout, id, work_ms, progress)

void register_kind(dmm::Bucket& bucket) {
  bucket.register_kind<Rollout>("rollout", {.concurrency = 4, .lease_ttl = 3s});
}

int worker_main(const std::string& postgres, const std::string& nats, const std::string& bucket_name, pid_t parent) {
  dmm::StopSignals signals;  // first: before any thread starts
  if (!parent_is(parent)) return 3;
  auto bucket = dmm::Bucket::open({.name = bucket_name, .postgres = postgres, .nats = nats});
  bucket.provide(std::make_shared<RunLog>(log_path(bucket_name)));
  register_kind(bucket);
  signals.run(bucket);
  return 0;
}

struct Line {
  pid_t pid;
  int step;
  std::string event;
};

class Report {
 public:
  void check(bool ok, const std::string& line) {
    std::cout << (ok ? "ok: " : "FAILED: ") << line << std::endl;
    if (!ok) ++failures_;
  }
  int failures() const { return failures_; }

 private:
  int failures_ = 0;
};

std::string unique_bucket() {
  static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
  std::random_device rd;
  std::string name = "outside-steps-";
  for (int i = 0; i < 10; ++i) name += alphabet[rd() % (sizeof alphabet - 1)];
  return name;
}

// Actions of the bucket that are ready with their progress done, by identity
// (their generation); the others' identities with what they show.
std::map<std::string, std::int64_t> completed(const std::string& postgres, const std::string& bucket,
                                              std::vector<std::string>* not_done) {
  std::map<std::string, std::int64_t> out;
  for (const auto& m : dmm::inspect({.postgres = postgres, .bucket = bucket, .kind = "rollout"})) {
    const auto progress = nlohmann::json::parse(m.state).at("progress").get<dmm::StepProgress>();
    if (m.phase == "ready" && progress.phase == "done" && progress.generation == m.generation)
      out[m.identity] = m.generation;
    else if (not_done)
      not_done->push_back(m.identity + " (" + m.phase + ", progress " + progress.phase + ", " + m.last_error + ")");
  }
  return out;
}

int checker_main(const std::string& postgres, const std::string& nats) {
  const auto bucket_name = unique_bucket();
  const auto path = log_path(bucket_name);
  std::filesystem::remove(path);
  std::cout << "steps_check: bucket " << bucket_name << ", run log " << path << ", PostgreSQL "
            << dmm::mask_url(postgres) << ", NATS " << dmm::mask_url(nats) << std::endl;
  auto bucket = dmm::Bucket::open({.name = bucket_name, .postgres = postgres, .nats = nats});
  register_kind(bucket);
  std::mt19937 rng{std::random_device{}()};
  std::vector<Rollout> actions;
  for (int i = 0; i < kActions; ++i)
    actions.push_back({.id = "rollout-" + std::to_string(i), .work_ms = 20 + static_cast<int>(rng() % 60)});
  bucket.notify_many(actions);

  Report report;
  const auto began = Clock::now();
  std::set<pid_t> killed;
  std::string failure;
  {
    Workers workers("steps", bucket_name, kWorkers);
    // Kills at random points while the actions run; then lets them finish.
    const auto deadline = Clock::now() + 120s;
    while (failure.empty()) {
      const auto done = completed(postgres, bucket_name, nullptr).size();
      if (done == static_cast<std::size_t>(kActions)) break;
      if (auto ended = workers.ended(); !ended.empty()) failure = "a worker ended on its own: " + ended;
      if (Clock::now() > deadline) failure = "timed out after 120 s";
      if (static_cast<int>(killed.size()) < kKills) {
        std::this_thread::sleep_for(std::chrono::milliseconds(300 + rng() % 900));
        killed.insert(workers.kill_and_replace(static_cast<int>(rng() % kWorkers)));
      } else {
        std::this_thread::sleep_for(50ms);
      }
    }
    if (auto stopped = workers.stop(10s); !stopped.empty() && failure.empty()) failure = "stopping: " + stopped;
  }
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - began).count();
  report.check(failure.empty(), std::to_string(kActions) + " actions of " + std::to_string(kSteps) + " steps, " +
                                    std::to_string(kWorkers) + " worker processes, " + std::to_string(killed.size()) +
                                    " SIGKILLed at random points and replaced, " + std::to_string(took) + " ms" +
                                    (failure.empty() ? "" : ": " + failure));

  // The run log, per action and generation, in the order it was written.
  std::map<std::pair<std::string, std::int64_t>, std::vector<Line>> runs;
  {
    std::ifstream in(path);
    std::string text;
    while (std::getline(in, text)) {
      std::istringstream fields(text);
      Line l{};
      std::string identity;
      std::int64_t generation = 0;
      if (!(fields >> l.pid >> identity >> generation >> l.step >> l.event))
        throw std::runtime_error("the run log has a line it cannot read: '" + text + "'");
      runs[{identity, generation}].push_back(l);
    }
  }
  long starts = 0, again = 0, went_back = 0, twice = 0, interrupted = 0;
  std::vector<std::string> examples;
  for (const auto& [action, lines] : runs) {
    int highest = 0;
    std::map<int, pid_t> started_by;      // step -> the process that last started it
    std::map<pid_t, std::set<int>> open;  // process -> steps it started and did not end
    for (const auto& l : lines) {
      if (l.event == "end") {
        open[l.pid].erase(l.step);
        continue;
      }
      ++starts;
      const auto what = action.first + " generation " + std::to_string(action.second) + ": step " +
                        std::to_string(l.step) + " started by pid " + std::to_string(l.pid);
      if (l.step < highest) {
        ++went_back;
        if (examples.size() < 5) examples.push_back(what + " after step " + std::to_string(highest) + " had started");
      } else if (auto it = started_by.find(l.step); it != started_by.end()) {
        ++again;
        if (!killed.count(it->second)) {
          ++twice;
          if (examples.size() < 5)
            examples.push_back(what + " again, though pid " + std::to_string(it->second) +
                               " that ran it before was never killed");
        }
      }
      highest = std::max(highest, l.step);
      started_by[l.step] = l.pid;
      open[l.pid].insert(l.step);
    }
    for (const auto& [pid, steps] : open)
      if (killed.count(pid)) interrupted += static_cast<long>(steps.size());
  }
  report.check(went_back == 0 && twice == 0, "no completed step ran twice: " + std::to_string(starts) +
                                                 " step starts, " + std::to_string(again) + " again after a kill, " +
                                                 std::to_string(went_back) + " after a later step had started, " +
                                                 std::to_string(twice) + " again without a kill");
  for (const auto& e : examples) std::cout << "    " << e << std::endl;
  report.check(interrupted > 0,
               std::to_string(interrupted) + " steps were interrupted by a kill (started, never ended)");

  std::vector<std::string> not_done;
  const auto done = completed(postgres, bucket_name, &not_done);
  long unlogged = 0;
  for (const auto& [identity, generation] : done) {
    std::set<int> ended;
    for (const auto& l : runs[{identity, generation}])
      if (l.event == "end") ended.insert(l.step);
    if (ended.size() != static_cast<std::size_t>(kSteps)) ++unlogged;
  }
  report.check(done.size() == static_cast<std::size_t>(kActions) && unlogged == 0,
               "every action completed: " + std::to_string(done.size()) + " of " + std::to_string(kActions) +
                   " ready with their progress done, " + std::to_string(unlogged) +
                   " of them without an end of each step in the run log");
  for (std::size_t i = 0; i < not_done.size() && i < 5; ++i) std::cout << "    " << not_done[i] << std::endl;

  dmm::remove_matters({.postgres = postgres, .bucket = bucket_name},
                      /*skip_finalize=*/true);
  if (report.failures() == 0) std::filesystem::remove(path);
  std::cout << "steps_check: " << report.failures() << " failed findings" << std::endl;
  return report.failures() == 0 ? 0 : 1;
}

}  // namespace
}  // namespace steps_check

int main(int argc, char** argv) {
  using namespace steps_check;
  std::vector<std::string> args(argv + 1, argv + argc);
  std::string postgres = first_env("DMM_TEST_POSTGRES_URL", "DMM_POSTGRES_URL");
  std::string nats = first_env("DMM_TEST_NATS_URL", "DMM_NATS_URL");
  spdlog::set_level(spdlog::level::err);  // the findings are the output; kills make warnings
  if (args.size() == 4 && args[0] == "worker") {
    try {
      return worker_main(postgres, nats, args[2], static_cast<pid_t>(std::stol(args[3])));
    } catch (const std::exception& e) {
      std::cerr << "steps_check worker: " << e.what() << std::endl;
      return 2;
    }
  }
  try {
    for (std::size_t i = 0; i + 1 < args.size(); i += 2) {
      if (args[i] == "--postgres")
        postgres = args[i + 1];
      else if (args[i] == "--nats")
        nats = args[i + 1];
      else
        throw std::invalid_argument("unknown argument '" + args[i] + "'");
    }
    if (args.size() % 2 != 0) throw std::invalid_argument("'" + args.back() + "' needs a value");
    if (postgres.empty() || nats.empty())
      throw dmm::ConnectionError(
          "no server URLs: pass --postgres and --nats, or set "
          "DMM_TEST_POSTGRES_URL and DMM_TEST_NATS_URL "
          "(scripts/test does)");
    // The workers find the servers the same way.
    setenv("DMM_TEST_POSTGRES_URL", postgres.c_str(), 1);
    setenv("DMM_TEST_NATS_URL", nats.c_str(), 1);
    return checker_main(postgres, nats);
  } catch (const std::invalid_argument& e) {
    std::cerr << "steps_check: " << e.what() << "\nusage: steps_check [--postgres URL] [--nats URL]\n";
    return 2;
  } catch (const std::exception& e) {
    std::cout << "FAILED: steps_check cannot run: " << e.what() << std::endl;
    return 2;
  }
}
