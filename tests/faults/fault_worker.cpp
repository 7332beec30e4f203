// fault_worker: one worker process of the fault suite. Works kind "probe"
// (or with --type steps, the steps scenario's kind "steps") of one bucket
// until SIGTERM/SIGINT (clean stop) or SIGKILL.
//   fault_worker --postgres URL --nats URL --bucket B --worker-id W [--type probe|steps]
//                [--concurrency N] [--lease-ms N] [--work-ms N] [--fail-rate F]
//                [--hang-rate F] [--hang-ms N] [--terminal-every N]
//                [--global-concurrency N] [--rate-count N --rate-per-ms N --rate-burst N]
//                [--record-postgres URL] [--ignore-stop 0|1] [--no-self-expiry 0|1]
// --postgres is the bucket's (through a fault proxy in the partition
// scenarios); the Probe records its runs through --record-postgres (default:
// the same), a link no partition touches: the recorder observes, it is not
// the system under test. --ignore-stop 1: materializers keep working after
// their stop token is requested; otherwise they return within 5 ms of it.
// --no-self-expiry 1: the mutation check (faults --mutate no-self-expiry)
// turns self-expiry off in this worker (engine/testing.hpp).
#include <dmm/signals.hpp>
#include <iostream>
#include <map>
#include <spdlog/spdlog.h>
#include <thread>

#include "engine/testing.hpp"
#include "probe.hpp"
#include "steps_scenario.hpp"

int main(int argc, char** argv) {
  std::map<std::string, std::string> flags = {{"concurrency", "8"}, {"lease-ms", "3000"}, {"work-ms", "2"},
                                              {"fail-rate", "0"},   {"hang-rate", "0"},   {"hang-ms", "0"},
                                              {"terminal-every", "0"}, {"replicas", "1"},
                                              {"global-concurrency", "0"}, {"rate-count", "0"},
                                              {"rate-per-ms", "1000"}, {"rate-burst", "1"},
                                              {"ignore-stop", "0"}, {"no-self-expiry", "0"},
                                              {"type", "probe"}};
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string key = argv[i];
    if (key.rfind("--", 0) != 0) {
      std::cerr << "unexpected argument " << key << "\n";
      return 2;
    }
    flags[key.substr(2)] = argv[i + 1];
  }
  for (const char* required : {"postgres", "nats", "bucket", "worker-id"})
    if (!flags.count(required)) {
      std::cerr << "missing --" << required << "\n";
      return 2;
    }
  dmm::StopSignals signals;  // before any thread starts
  dmm::detail::testing::self_expiry_off = flags["no-self-expiry"] == "1";
  spdlog::set_pattern("[%H:%M:%S.%e] [" + flags["worker-id"] + "] [%l] %v");
  try {
    auto behavior = std::make_shared<dmm_test::ProbeEnv>();
    behavior->postgres = flags.count("record-postgres") ? flags["record-postgres"] : flags["postgres"];
    behavior->ignore_stop = flags["ignore-stop"] == "1";
    behavior->bucket = flags["bucket"];
    behavior->worker = flags["worker-id"];
    behavior->work = std::chrono::milliseconds(std::stol(flags["work-ms"]));
    behavior->fail_rate = std::stod(flags["fail-rate"]);
    behavior->hang_rate = std::stod(flags["hang-rate"]);
    behavior->hang = std::chrono::milliseconds(std::stol(flags["hang-ms"]));
    behavior->terminal_every = std::stol(flags["terminal-every"]);
    auto bucket = dmm::Bucket::open({.name = flags["bucket"],
                                     .postgres = flags["postgres"],
                                     .nats = flags["nats"],
                                     .worker_id = flags["worker-id"],
                                     .stream_replicas = std::stoi(flags["replicas"]),
                                     .token_grace = std::chrono::milliseconds(1000)});
    const dmm::KindOptions options{
        .concurrency = std::stoi(flags["concurrency"]),
        .lease_ttl = std::chrono::milliseconds(std::stol(flags["lease-ms"])),
        .backoff = {.initial = std::chrono::milliseconds(50), .max = std::chrono::milliseconds(1000)},
        .stop_grace = std::chrono::milliseconds(5000),
        .global_concurrency = std::stoi(flags["global-concurrency"]),
        .rate_limit = {.count = std::stoi(flags["rate-count"]),
                       .per = std::chrono::milliseconds(std::stol(flags["rate-per-ms"])),
                       .burst = std::stoi(flags["rate-burst"])}};
    if (flags["type"] == "steps") {
      bucket.register_kind<fault_steps::Action>(fault_steps::kKind, options);
      bucket.provide(std::make_shared<fault_steps::Env>(
          fault_steps::Env{.postgres = behavior->postgres, .bucket = behavior->bucket, .worker = behavior->worker,
                           .work = behavior->work}));
    } else {
      bucket.register_kind<dmm_test::Probe>("probe", options);
      bucket.provide(behavior);
    }
    std::cout << "ready" << std::endl;
    signals.run(bucket);
    return 0;
  } catch (const std::exception& e) {
    spdlog::error("fault_worker: {}", e.what());
    return 1;
  }
}
