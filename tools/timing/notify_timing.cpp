// dmm_notify_timing: a small timing run for before/after comparisons of the
// hot path (not the benchmark of issue 5): notify_many N no-op matters, work
// them with one worker process, and time until every one is ready.
//
//   dmm_notify_timing POSTGRES_URL NATS_URL [COUNT=20000] [CONCURRENCY=32] [HISTORY_LIMIT=10]
//
// Prints one line: count, concurrency, history limit, seconds, matters/s.
// Build it against an older dmm with -DDMM_TIMING_NO_HISTORY (no history_limit).
#include <chrono>
#include <cstdio>
#include <dmm/dmm.hpp>
#include <pqxx/pqxx>
#include <random>
#include <spdlog/spdlog.h>
#include <string>
#include <thread>

namespace {

struct Noop {
  std::string id;
  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context&) { return dmm::Result::done(); }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Noop, id)

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s POSTGRES_URL NATS_URL [COUNT] [CONCURRENCY] [HISTORY_LIMIT]\n", argv[0]);
    return 2;
  }
  const std::string pg = argv[1], nats = argv[2];
  const int count = argc > 3 ? std::stoi(argv[3]) : 20000;
  const int concurrency = argc > 4 ? std::stoi(argv[4]) : 32;
  const int history = argc > 5 ? std::stoi(argv[5]) : 10;
  spdlog::set_level(spdlog::level::warn);
  const std::string name = "timing_" + std::to_string(std::random_device{}() % 1000000);
  auto bucket = dmm::Bucket::open({.name = name, .postgres = pg, .nats = nats});
  dmm::KindOptions options{.concurrency = concurrency};
#ifndef DMM_TIMING_NO_HISTORY
  options.history_limit = history;
#else
  (void)history;
#endif
  auto& noop = bucket.register_kind<Noop>("noop", options);
  std::vector<Noop> matters;
  for (int i = 0; i < count; ++i) matters.push_back({"m-" + std::to_string(i)});

  const auto t0 = std::chrono::steady_clock::now();
  std::thread worker([&] { noop.work(); });
  bucket.notify_many(matters);
  pqxx::connection conn(pg);
  while (true) {
    pqxx::nontransaction tx(conn);
    auto ready = tx.exec_params("SELECT count(*) FROM dmm.matter WHERE bucket = $1 AND phase = 'ready'", name)[0][0]
                     .as<long>();
    if (ready >= count) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  noop.stop();
  worker.join();
  std::printf("count=%d concurrency=%d history_limit=%d seconds=%.2f matters_per_s=%.0f\n", count, concurrency,
#ifndef DMM_TIMING_NO_HISTORY
              history,
#else
              -1,
#endif
              seconds, count / seconds);
  pqxx::work cleanup(conn);
  cleanup.exec_params("DELETE FROM dmm.matter WHERE bucket = $1", name);
  cleanup.exec_params("DELETE FROM dmm.kick WHERE bucket = $1", name);
  cleanup.commit();
  return 0;
}
