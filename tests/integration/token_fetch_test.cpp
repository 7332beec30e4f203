// Fetching tokens across a NATS link that freezes and heals while tokens keep
// coming: a fetch returns at most the tokens it asked for. With nats.c
// 3.4.1's natsSubscription_FetchRequest it did not: the pull requests sent
// while the link was frozen are answered after the heal, when no fetch waits,
// and a fetch that starts with more than half its batch already waiting wrote
// every later token past the end of its array (heap corruption; the worker
// died of "double free or corruption" in the fault suite's nats-partition).
// docs/RELIABILITY.md, "Partitions"; tokens.cpp, TokenSource::pull.
#include <atomic>
#include <catch2/catch.hpp>
#include <thread>

#include "harness.hpp"
#include "proxy.hpp"
#include "tokens/tokens.hpp"

using namespace dmm_test;

TEST_CASE("a fetch returns at most what it asked for after a frozen NATS link heals", "[tokens]") {
  const std::string name = unique_name("fetchheal");
  const auto& url = servers().nats;
  Proxy proxy("127.0.0.1", std::stoi(url.substr(url.rfind(':') + 1)));
  auto log = test_logger();
  dmm::detail::NatsEndpoint through_proxy;
  through_proxy.url = "nats://127.0.0.1:" + std::to_string(proxy.port());
  dmm::detail::NatsEndpoint straight;
  straight.url = url;
  dmm::detail::Nats direct(straight, 1, name, "direct", *log);
  dmm::detail::Nats proxied(through_proxy, 1, name, "proxied", *log);
  dmm::detail::TokenSource source(proxied, "k", dmm::Priority::normal);

  // Tokens keep coming on a link no freeze touches, one matter each.
  std::atomic<bool> stop{false};
  std::thread publisher([&] {
    for (std::int64_t id = 1; !stop; id += 50) {
      for (std::int64_t i = id; i < id + 50; ++i) direct.publish("k", dmm::Priority::normal, {i});
      direct.flush(std::chrono::milliseconds(1000));
    }
  });

  constexpr int kMax = 16;
  std::size_t most = 0, total = 0;
  const auto take = [&](std::chrono::milliseconds timeout) {
    auto tokens = source.fetch(kMax, timeout);
    most = std::max(most, tokens.size());
    total += tokens.size();
    for (auto& token : tokens) token.ack();
  };
  for (int cycle = 0; cycle < 12 && most <= static_cast<std::size_t>(kMax); ++cycle) {
    // Each fetch while frozen leaves two pull requests in the link (16 tokens
    // at once, then one with a wait), answered together at the heal.
    proxy.freeze();
    for (int i = 0; i < 3; ++i) take(std::chrono::milliseconds(50));
    proxy.heal();
    for (int i = 0; i < 10; ++i) take(std::chrono::milliseconds(50));
  }
  stop = true;
  publisher.join();
  INFO("tokens fetched: " << total << ", most in one fetch: " << most);
  CHECK(total > 0);
  REQUIRE(most <= static_cast<std::size_t>(kMax));
}
