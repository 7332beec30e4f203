// NotifyGroups: concurrent single notifies of a kind written together. The
// writes here record what they were given instead of going to PostgreSQL
// (the integration tests run the real statement: notify_test.cpp).
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "dmm/errors.hpp"
#include "engine/notify_group.hpp"

using dmm::detail::JsonMatter;
using dmm::detail::NotifyGroups;
using namespace std::chrono_literals;

namespace {

JsonMatter matter(const std::string& identity, int value = 0) { return {identity, {{"v", value}}}; }

// Records every write; writes of identities starting with "hold" wait until
// release(); a write containing "bad" throws DatabaseError.
struct Writes {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::vector<JsonMatter>> seen;
  int holding = 0;
  bool released = false;

  void operator()(std::vector<JsonMatter>& batch) {
    std::unique_lock lock(mu);
    seen.push_back(batch);
    if (batch.front().identity.rfind("hold", 0) == 0) {
      ++holding;
      cv.notify_all();
      cv.wait(lock, [&] { return released; });
    }
    for (const auto& m : batch)
      if (m.identity == "bad") throw dmm::DatabaseError("refused: " + m.identity, "22P05");
  }
  void wait_holding(int n) {
    std::unique_lock lock(mu);
    REQUIRE(cv.wait_for(lock, 10s, [&] { return holding == n; }));
  }
  void release() {
    std::lock_guard lock(mu);
    released = true;
    cv.notify_all();
  }
};

// Notifies of kind "k" whose writes hold every writer until release().
struct BusyWriters {
  NotifyGroups groups;
  Writes writes;
  NotifyGroups::Write write = [this](std::vector<JsonMatter>& b) { writes(b); };
  std::vector<std::jthread> threads;  // declared last: joined first

  BusyWriters() {
    for (int i = 0; i < NotifyGroups::kWriters; ++i)
      threads.emplace_back([this, i] { groups.notify("k", matter("hold-" + std::to_string(i)), write); });
    writes.wait_holding(NotifyGroups::kWriters);
  }
  ~BusyWriters() { release(); }
  void release() {
    writes.release();
    threads.clear();
  }
};

// Polls `groups` until `n` calls of kind "k" are queued.
void wait_waiting(NotifyGroups& groups, std::size_t n) {
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (groups.waiting("k") != n) {
    REQUIRE(std::chrono::steady_clock::now() < deadline);
    std::this_thread::yield();
  }
}

}  // namespace

TEST_CASE("a notify alone is written at once, by its own call", "[notify-group]") {
  NotifyGroups groups;
  Writes writes;
  auto write = [&](std::vector<JsonMatter>& b) { writes(b); };
  groups.notify("k", matter("a"), write);
  groups.notify("k", matter("b"), write);
  REQUIRE(writes.seen.size() == 2);
  CHECK(writes.seen[0].size() == 1);
  CHECK(writes.seen[1].front().identity == "b");
  CHECK(groups.waiting("k") == 0);
}

TEST_CASE("notifies queued while the writers are busy are written in one write", "[notify-group]") {
  BusyWriters busy;
  auto& [groups, writes, write, threads] = busy;
  // Another kind is not held up by these writers.
  groups.notify("other", matter("free"), write);

  const std::vector<std::string> queued = {"q-3", "q-1", "q-2", "q-1"};
  for (std::size_t i = 0; i < queued.size(); ++i) {  // one after the other: the queue's order is known
    threads.emplace_back([&, i] { groups.notify("k", matter(queued[i], static_cast<int>(i)), write); });
    wait_waiting(groups, i + 1);
  }
  busy.release();

  // The held writes, the other kind's, and one write of the queued calls:
  // one matter per identity (the later q-1), in identity order.
  REQUIRE(writes.seen.size() == static_cast<std::size_t>(NotifyGroups::kWriters) + 2);
  const auto& grouped = writes.seen.back();
  REQUIRE(grouped.size() == 3);
  CHECK(grouped[0].identity == "q-1");
  CHECK(grouped[1].identity == "q-2");
  CHECK(grouped[2].identity == "q-3");
  CHECK(grouped[0].state.at("v") == 3);
  CHECK(groups.waiting("k") == 0);
}

TEST_CASE("a refused group is written one by one and only the bad notify fails", "[notify-group]") {
  BusyWriters busy;
  auto& [groups, writes, write, threads] = busy;

  std::atomic<int> ok{0};
  std::string error;
  std::mutex error_mu;
  for (const std::string id : {"good-1", "bad", "good-2"})
    threads.emplace_back([&, id] {
      try {
        groups.notify("k", matter(id), write);
        ++ok;
      } catch (const dmm::DatabaseError& e) {
        std::lock_guard lock(error_mu);
        error = e.what();
      }
    });
  wait_waiting(groups, 3);
  busy.release();

  CHECK(ok == 2);
  CHECK(error == "refused: bad");
  // The group of three, then each of them alone.
  REQUIRE(writes.seen.size() == static_cast<std::size_t>(NotifyGroups::kWriters) + 4);
  CHECK(writes.seen[NotifyGroups::kWriters].size() == 3);
  for (std::size_t i = NotifyGroups::kWriters + 1; i < writes.seen.size(); ++i) CHECK(writes.seen[i].size() == 1);
}

TEST_CASE("a connection error fails every notify of the group", "[notify-group]") {
  NotifyGroups groups;
  int calls = 0;
  auto write = [&](std::vector<JsonMatter>&) {
    ++calls;
    throw dmm::ConnectionError("lost the connection");
  };
  CHECK_THROWS_AS(groups.notify("k", matter("a"), write), dmm::ConnectionError);
  CHECK(calls == 1);  // not written again one by one: only a refusal is
}
