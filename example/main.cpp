// example: the music-player scenario of the dmm README.
//
//   example worker            run workers + a simulated fleet + its observer until Ctrl-C
//                             (--http :PORT for /metrics, /readyz and the web view;
//                             --log-format json for machine-readable logs)
//   example create --count N  create players (--flaky: some fail a few times first)
//   example wait              wait until every player is ready, showing progress
//   example debug [identity]  show every matter (or one) and why it is (not) ready
//                             (one matter: the same text as `dmmctl describe`)
//
// Connection settings: --postgres/--nats, else DMM_POSTGRES_URL/DMM_NATS_URL,
// else the .dmm/env that `scripts/dev-env up` wrote.
#include <CLI/CLI.hpp>
#include <csignal>
#include <dmm/dev_env.hpp>
#include <dmm/dmm.hpp>
#include <iostream>
#include <spdlog/spdlog.h>
#include <thread>

#include "fleet.hpp"
#include "music_player.hpp"

namespace {

using example::MusicPlayer;
constexpr const char* kKind = "music-player";

struct Settings {
  std::string postgres, nats, bucket = "music", log_level = "info";
};

dmm::Bucket open_bucket(Settings& s) {
  s.postgres = dmm::required_dev_env_setting(s.postgres, "DMM_POSTGRES_URL", "postgres", "postgres URL");
  s.nats = dmm::required_dev_env_setting(s.nats, "DMM_NATS_URL", "nats", "nats URL");
  spdlog::info("opening bucket '{}' (PostgreSQL {}, NATS {})", s.bucket, dmm::mask_url(s.postgres),
               dmm::mask_url(s.nats));
  return dmm::Bucket::open({.name = s.bucket, .postgres = s.postgres, .nats = s.nats});
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"dmm example: music players kept playing their desired song"};
  app.require_subcommand(1);
  Settings s;
  app.add_option("--postgres", s.postgres, "PostgreSQL URL (default: $DMM_POSTGRES_URL or .dmm/env)");
  app.add_option("--nats", s.nats, "NATS URL (default: $DMM_NATS_URL or .dmm/env)");
  app.add_option("--bucket", s.bucket, "bucket name")->capture_default_str();
  app.add_option("--log-level", s.log_level, "trace, debug, info, warn, error")->capture_default_str();

  auto* worker = app.add_subcommand("worker", "work the players until Ctrl-C, with a simulated fleet and its observer");
  int concurrency = 8, observe_ms = 500;
  double failure_rate = 0.05, drift_rate = 0.01;
  worker->add_option("--concurrency", concurrency, "materializations at once")->capture_default_str();
  worker->add_option("--failure-rate", failure_rate, "chance a play command fails")->capture_default_str();
  worker->add_option("--drift-rate", drift_rate, "chance per observation that a player switches song on its own")
      ->capture_default_str();
  worker->add_option("--observe-ms", observe_ms, "observer period")->capture_default_str();
  std::string http, log_format = "text";
  worker->add_option("--http", http, "serve /metrics, /healthz, /readyz and the web view on [host]:PORT (off by default)");
  worker->add_option("--log-format", log_format, "text or json")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();

  auto* create = app.add_subcommand("create", "create players with a desired song");
  int count = 20;
  bool flaky = false;
  std::string prefix = "player-";
  create->add_option("--count", count, "how many players")->capture_default_str();
  create->add_flag("--flaky", flaky, "every third player fails 2-3 times before it succeeds");
  create->add_option("--prefix", prefix, "identity prefix")->capture_default_str();

  auto* wait = app.add_subcommand("wait", "wait until every player is ready, printing progress");
  int timeout_s = 120;
  wait->add_option("--timeout", timeout_s, "seconds before giving up (exit 1)")->capture_default_str();

  auto* debug = app.add_subcommand("debug", "show every matter (or one) and why it is (not) ready");
  std::string identity;
  debug->add_option("identity", identity, "one player's identity");

  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::from_str(s.log_level));
  try {
    if (worker->parsed()) {
      spdlog::set_formatter(dmm::make_log_formatter(dmm::parse_log_format(log_format)));
      // Before any thread starts; a Ctrl-C during start-up stops the worker
      // as soon as it runs.
      dmm::StopSignals signals;
      auto bucket = open_bucket(s);
      bucket.register_kind<MusicPlayer>(kKind, {.concurrency = concurrency});
      // DMM_HTTP_TOKEN turns on the web view's retry and remove (docs/OPERATIONS.md).
      if (!http.empty()) bucket.serve_http(http, dmm::HttpOptions::from_env());
      auto fleet = std::make_shared<example::Fleet>(failure_rate, drift_rate);
      bucket.provide(fleet);
      std::jthread observer([&](std::stop_token st) {
        example::observe_fleet(bucket, *fleet, std::chrono::milliseconds(observe_ms), st);
      });
      signals.run(bucket, [](int sig) {
        spdlog::info("received {}, stopping: in-flight work finishes or its leases are released",
                     sig == SIGINT ? "SIGINT" : "SIGTERM");
      });
      observer.request_stop();
      spdlog::info("worker stopped cleanly");
      return 0;
    }
    auto bucket = open_bucket(s);
    bucket.register_kind<MusicPlayer>(kKind);
    if (create->parsed()) {
      std::vector<MusicPlayer> players;
      for (int i = 0; i < count; ++i) {
        MusicPlayer p{.player_id = prefix + std::to_string(i),
                      .desired_song = example::songs()[static_cast<std::size_t>(i) % example::songs().size()]};
        if (flaky && i % 3 == 0) p.fail_first = 2 + i % 2;
        players.push_back(std::move(p));
      }
      bucket.notify_many(players);
      std::cout << "notified " << players.size() << " player(s)" << (flaky ? " (every third one flaky)" : "") << "\n";
      return 0;
    }
    dmm::InspectQuery q{.postgres = s.postgres, .bucket = s.bucket, .kind = std::string(kKind)};
    if (wait->parsed()) {
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
      while (true) {
        auto matters = dmm::inspect(q);
        std::map<std::string, int> phases;
        int ready = 0;
        for (const auto& m : matters) {
          ++phases[m.phase];
          if (m.phase == "ready" && m.generation == m.materialized_generation) ++ready;
        }
        std::string summary;
        for (const auto& [phase, n] : phases) summary += " " + phase + "=" + std::to_string(n);
        std::cout << "ready " << ready << "/" << matters.size() << " |" << summary << std::endl;
        if (!matters.empty() && ready == static_cast<int>(matters.size())) return 0;
        if (std::chrono::steady_clock::now() > deadline) {
          std::cerr << "not all players are ready after " << timeout_s << "s; see `example debug`\n";
          return 1;
        }
        std::this_thread::sleep_for(std::chrono::seconds(1));
      }
    }
    if (debug->parsed()) {
      if (!identity.empty()) {
        // The same implementation as `dmmctl describe` (and `why`, its last line).
        auto detail = dmm::describe(s.postgres, s.bucket, kKind, identity);
        if (!detail) {
          std::cout << "no player '" << identity << "'\n";
          return 1;
        }
        std::cout << dmm::format_detail(*detail);
        return 0;
      }
      auto matters = dmm::inspect(q);
      if (matters.empty()) {
        std::cout << "no players stored\n";
        return 0;
      }
      std::printf("%-14s %-11s %-9s %-8s %-24s %-22s %s\n", "IDENTITY", "PHASE", "GEN/MAT", "ATTEMPTS", "NEXT DUE",
                  "LEASE", "LAST ERROR");
      for (const auto& m : matters) {
        const auto gen = std::to_string(m.generation) + "/" + std::to_string(m.materialized_generation);
        std::printf("%-14s %-11s %-9s %-8d %-24s %-22s %s\n", m.identity.c_str(), m.phase.c_str(), gen.c_str(),
                    m.attempts, m.due_at.empty() ? "-" : m.due_at.c_str(),
                    m.lease_owner.empty() ? "-" : m.lease_owner.c_str(), m.last_error.c_str());
      }
      return 0;
    }
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return 1;
  }
  return 0;
}
