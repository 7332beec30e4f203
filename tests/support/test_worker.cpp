// dmm_test_worker: a standalone worker process for the multi-process tests.
//
//   dmm_test_worker --postgres URL --nats URL --bucket NAME [--kind probe]
//                   [--concurrency N] [--lease-ms N] [--sleep-ms N]
//                   [--stop-grace-ms N] [--token-grace-ms N] [--worker-id X]
//                   [--type probe|steps]
//   dmm_test_worker --mode notify --identity ID --seq N (plus the above)
//
// work mode (default) registers the Probe materializer, prints "ready" once the
// bucket is open and runs it until SIGTERM/SIGINT, then stops cleanly and exits
// 0. notify mode notifies one Probe, prints "notified" as soon as notify
// returned, and waits to be killed (the durability test SIGKILLs it).
#include <signal.h>
#include <pthread.h>

#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <stdexcept>
#include <string>
#include <thread>

#include "dmm/dmm.hpp"
#include "probe.hpp"
#include "steps_probe.hpp"

namespace {

using Flags = std::map<std::string, std::string>;

Flags parse(int argc, char** argv) {
  Flags flags = {{"mode", "work"},         {"kind", "probe"},     {"concurrency", "4"},
                 {"lease-ms", "3000"},     {"sleep-ms", "0"},     {"stop-grace-ms", "3000"},
                 {"token-grace-ms", "500"}, {"worker-id", ""},    {"seq", "1"},
                 {"type", "probe"}};
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0 || i + 1 >= argc) throw std::invalid_argument("bad argument: " + arg);
    flags[arg.substr(2)] = argv[++i];
  }
  for (const char* required : {"postgres", "nats", "bucket"})
    if (flags[required].empty()) throw std::invalid_argument(std::string("--") + required + " is required");
  return flags;
}

long number(const Flags& flags, const std::string& name) { return std::stol(flags.at(name)); }

std::shared_ptr<spdlog::logger> make_logger(const std::string& worker) {
  auto logger = spdlog::stderr_color_mt("worker " + (worker.empty() ? std::string("?") : worker));
  const char* level = std::getenv("DMM_TEST_LOG_LEVEL");
  logger->set_level(level ? spdlog::level::from_str(level) : spdlog::level::warn);
  return logger;
}

int run(const Flags& flags) {
  // Before any thread exists, so that only its waiter receives SIGTERM/SIGINT.
  dmm::StopSignals signals;

  auto bucket = dmm::Bucket::open({
      .name = flags.at("bucket"),
      .postgres = flags.at("postgres"),
      .nats = flags.at("nats"),
      .worker_id = flags.at("worker-id"),
      .token_grace = std::chrono::milliseconds(number(flags, "token-grace-ms")),
      .logger = make_logger(flags.at("worker-id")),
  });
  dmm::KindOptions options;
  options.concurrency = static_cast<int>(number(flags, "concurrency"));
  options.lease_ttl = std::chrono::milliseconds(number(flags, "lease-ms"));
  options.stop_grace = std::chrono::milliseconds(number(flags, "stop-grace-ms"));
  options.backoff = dmm::Backoff{.initial = std::chrono::milliseconds(50),
                                 .max = std::chrono::milliseconds(1000),
                                 .multiplier = 2.0,
                                 .jitter = 0.2};
  if (flags.at("type") == "steps") {
    bucket.register_kind<dmm_test::StepsProbe>(flags.at("kind"), options);
    auto steps = std::make_shared<dmm_test::StepsEnv>();
    steps->postgres = flags.at("postgres");
    steps->bucket = flags.at("bucket");
    steps->work = std::chrono::milliseconds(number(flags, "sleep-ms"));
    pqxx::connection conn(steps->postgres);
    dmm_test::ensure_step_runs_table(conn);
    bucket.provide(steps);
  } else {
    bucket.register_kind<dmm_test::Probe>(flags.at("kind"), options);
  }

  auto env = std::make_shared<dmm_test::ProbeEnv>();
  env->postgres = flags.at("postgres");
  env->bucket = flags.at("bucket");
  env->worker = bucket.worker_id();
  env->work = std::chrono::milliseconds(number(flags, "sleep-ms"));
  {
    pqxx::connection conn(env->postgres);
    dmm_test::ensure_runs_table(conn);
  }
  bucket.provide(env);

  if (flags.at("mode") == "notify") {
    bucket.notify(dmm_test::Probe{.id = flags.at("identity"), .seq = number(flags, "seq")});
    std::cout << "notified" << std::endl;
    sigset_t stop;  // blocked by `signals`
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    int sig = 0;
    sigwait(&stop, &sig);
    return 0;
  }
  if (flags.at("mode") != "work") throw std::invalid_argument("unknown --mode " + flags.at("mode"));

  std::cout << "ready" << std::endl;
  signals.run(bucket);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const std::exception& e) {
    std::cerr << "dmm_test_worker: " << e.what() << std::endl;
    return 1;
  }
}
