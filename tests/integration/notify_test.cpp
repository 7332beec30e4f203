// Notify: durability, no-op on identical state, bulk and transactional notify,
// and the get/update/remove basics.
#include <atomic>
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "harness.hpp"
#include "probe.hpp"

using namespace dmm_test;

namespace {

struct Note {
  std::string id;
  std::string text;
  long seq = 0;
  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context& ctx) {
    ctx.service<Recorder>().record(id, {.value = text, .attempt = ctx.attempt()});
    return dmm::Result::done();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Note, id, text, seq)

struct Fixture {
  std::string name = unique_name("notify");
  dmm::Bucket bucket = open_bucket(name);
  std::shared_ptr<Recorder> recorder = std::make_shared<Recorder>();
  Fixture() {
    bucket.register_kind<Note>("note", fast_kind());
    bucket.provide(recorder);
  }
};

}  // namespace

TEST_CASE("a notify that returned is durable", "[notify]") {
  Fixture f;
  f.bucket.notify(Note{.id = "kitchen", .text = "Blue", .seq = 1});

  // A separate connection sees it at once: it was committed before notify returned.
  auto row = query_matter(f.name, "note", "kitchen");
  REQUIRE(row.has_value());
  CHECK(row->state.at("text") == "Blue");
  CHECK(row->state.at("seq") == 1);
  CHECK(row->generation >= 1);
  CHECK(row->phase == "pending");
  CHECK(row->materialized_generation < row->generation);
}

TEST_CASE("concurrent notifies, written together, are each durable when they return; a bad one fails alone",
          "[notify]") {
  Fixture f;
  constexpr int kThreads = 16, kEach = 25;
  std::atomic<int> missing{0}, failed{0}, refused{0};
  std::mutex message_mu;
  std::string refusal;
  {
    std::vector<std::jthread> threads;
    for (int t = 0; t < kThreads; ++t)
      threads.emplace_back([&, t] {
        for (int k = 0; k < kEach; ++k) {
          const auto id = fmt::format("t{}-{}", t, k);
          try {
            f.bucket.notify(Note{.id = id, .text = "x", .seq = k});
            // Shared by every thread: the same identity in one write at most once.
            f.bucket.notify(Note{.id = fmt::format("shared-{}", k % 3), .text = "s", .seq = t * 1000 + k});
          } catch (const std::exception&) {
            ++failed;
            continue;
          }
          // Committed before notify returned, whoever wrote it.
          auto row = query_matter(f.name, "note", id);
          if (!row || row->state.at("seq") != k) ++missing;
          if (t == 0 && k == kEach / 2) {
            try {  // a string PostgreSQL's jsonb refuses (\u0000), among the concurrent ones
              f.bucket.notify(Note{.id = "refused", .text = std::string("nul\0inside", 10), .seq = 1});
            } catch (const dmm::DatabaseError& e) {
              ++refused;
              std::lock_guard lock(message_mu);
              refusal = e.what();
            }
          }
        }
      });
  }
  CHECK(failed == 0);
  CHECK(missing == 0);
  CHECK(refused == 1);
  CHECK_THAT(refusal, Catch::Contains("note") && Catch::Contains("refused"));
  CHECK_FALSE(query_matter(f.name, "note", "refused").has_value());
  CHECK(count_matters(f.name, "note") == kThreads * kEach + 3);

  // Their tokens (many matters a token when written together) reach a worker.
  Runner runner(f.bucket);
  wait_until([&] { return count_converged(f.name, "note") == kThreads * kEach + 3; }, 30s,
             "every notified matter to become ready", [&] { return describe_unconverged(f.name); });
}

TEST_CASE("a notify that returned survives a SIGKILL of the notifying process", "[notify]") {
  const std::string name = unique_name("crash");
  {
    Process notifier(worker_binary(), {"--mode", "notify", "--postgres", servers().postgres, "--nats",
                                       servers().nats, "--bucket", name, "--identity", "crash-1", "--seq", "7",
                                       "--worker-id", "notifier"});
    notifier.expect_line("notified", 20s);
    notifier.kill(SIGKILL);
    REQUIRE(notifier.wait(10s) == 128 + SIGKILL);
  }
  auto row = query_matter(name, "probe", "crash-1");
  REQUIRE(row.has_value());
  CHECK(row->state.at("seq") == 7);

  // And it converges with no further notify once a worker runs.
  auto worker = start_worker({.bucket = name, .worker_id = "after-crash"});
  wait_until([&] { return count_converged(name, "probe") == 1; }, 15s, "the notified matter to become ready",
             [&] { return describe_unconverged(name); });
}

TEST_CASE("notifying the state a matter already has is a no-op", "[notify]") {
  Fixture f;
  const Note note{.id = "hall", .text = "Red", .seq = 1};
  f.bucket.notify(note);
  auto first = query_matter(f.name, "note", "hall");
  REQUIRE(first.has_value());

  SECTION("while pending") {
    for (int i = 0; i < 20; ++i) f.bucket.notify(note);
    auto again = query_matter(f.name, "note", "hall");
    REQUIRE(again.has_value());
    CHECK(again->generation == first->generation);
    CHECK(again->state == first->state);
  }

  SECTION("once ready") {
    Runner runner(f.bucket);
    wait_until([&] { return count_converged(f.name, "note") == 1; }, 10s, "hall to become ready",
               [&] { return describe_unconverged(f.name); });
    auto ready = query_matter(f.name, "note", "hall");
    const std::size_t runs = f.recorder->count("hall");
    CHECK(runs >= 1);
    for (int i = 0; i < 20; ++i) f.bucket.notify(note);
    auto again = query_matter(f.name, "note", "hall");
    REQUIRE(again.has_value());
    CHECK(again->generation == ready->generation);
    CHECK(again->phase == "ready");
    CHECK_FALSE(again->work_owed);
    // Nothing is materialized again: the stored state already matches.
    holds_for([&] { return f.recorder->count("hall") == runs && query_phase(f.name, "note", "hall") == "ready"; },
              1500ms, "no further materialization of hall");
    runner.stop();
  }
}

TEST_CASE("notify_many stores every matter and the last state of a repeated identity wins", "[notify]") {
  Fixture f;
  std::vector<Note> notes = {
      {.id = "a", .text = "a1", .seq = 1}, {.id = "b", .text = "b1", .seq = 1}, {.id = "a", .text = "a2", .seq = 2},
      {.id = "c", .text = "c1", .seq = 1}, {.id = "a", .text = "a3", .seq = 3},
  };
  f.bucket.notify_many(notes);
  CHECK(count_matters(f.name, "note") == 3);
  CHECK(query_matter(f.name, "note", "a")->state.at("text") == "a3");
  CHECK(query_matter(f.name, "note", "b")->state.at("text") == "b1");
  CHECK(query_matter(f.name, "note", "c")->state.at("text") == "c1");

  std::vector<Note> bulk;
  for (int i = 0; i < 1000; ++i) bulk.push_back({.id = "bulk-" + std::to_string(i), .text = "x", .seq = i});
  f.bucket.notify_many(bulk);
  CHECK(count_matters(f.name, "note", "identity LIKE 'bulk-%'") == 1000);
}

TEST_CASE("a transactional notify commits or rolls back with the caller's transaction", "[notify]") {
  Fixture f;
  pqxx::connection app(servers().postgres);

  {
    pqxx::work txn(app);
    f.bucket.notify(txn, Note{.id = "rolled-back", .text = "never"});
    txn.abort();
  }
  CHECK(query_phase(f.name, "note", "rolled-back") == "(absent)");

  Runner runner(f.bucket);
  {
    pqxx::work txn(app);
    f.bucket.notify(txn, Note{.id = "committed", .text = "yes"});
    // Not visible to anyone else before the caller commits.
    CHECK(query_phase(f.name, "note", "committed") == "(absent)");
    txn.commit();
  }
  CHECK(query_phase(f.name, "note", "committed") != "(absent)");

  // Materialized with no other notify: the commit alone wakes a worker (or the
  // sweeper sends the token after token_grace).
  wait_until([&] { return f.recorder->count("committed") >= 1; }, 10s, "the committed matter to be materialized",
             [&] { return describe_unconverged(f.name); });
  wait_until([&] { return count_converged(f.name, "note") == 1; }, 10s, "the committed matter to become ready",
             [&] { return describe_unconverged(f.name); });
  CHECK(f.recorder->entries("committed").back().value == "yes");
  CHECK(f.recorder->count("rolled-back") == 0);
  runner.stop();
}

TEST_CASE("a transactional notify_many commits or rolls back as a whole, and every matter converges",
          "[notify]") {
  Fixture f;
  pqxx::connection app(servers().postgres);
  // More than one statement's worth (2000), and one identity twice: the last wins.
  std::vector<Note> bulk;
  for (int i = 0; i < 2500; ++i) bulk.push_back({.id = "tx-" + std::to_string(i), .text = "first", .seq = i});
  bulk.push_back({.id = "tx-7", .text = "last", .seq = 7});

  {
    pqxx::work txn(app);
    f.bucket.notify_many(txn, bulk);
    txn.abort();
  }
  CHECK(count_matters(f.name, "note") == 0);

  Runner runner(f.bucket);
  {
    pqxx::work txn(app);
    f.bucket.notify_many(txn, bulk);
    CHECK(count_matters(f.name, "note") == 0);  // not visible before the commit
    txn.commit();
  }
  CHECK(count_matters(f.name, "note") == 2500);
  // No token was published by the call: the sweeper, woken by the commit,
  // sends them.
  wait_until([&] { return count_converged(f.name, "note") == 2500; }, 30s, "all 2500 matters to become ready",
             [&] { return describe_unconverged(f.name); });
  CHECK(query_matter(f.name, "note", "tx-7")->state.at("text") == "last");
  CHECK(f.recorder->entries("tx-7").back().value == "last");
  runner.stop();
}

TEST_CASE("get returns the stored state, or nothing", "[notify]") {
  Fixture f;
  CHECK_FALSE(f.bucket.get<Note>("nobody").has_value());
  f.bucket.notify(Note{.id = "desk", .text = "Green", .seq = 4});
  auto got = f.bucket.get<Note>("desk");
  REQUIRE(got.has_value());
  CHECK(got->id == "desk");
  CHECK(got->text == "Green");
  CHECK(got->seq == 4);
}

TEST_CASE("update changes part of a stored matter atomically", "[notify]") {
  Fixture f;
  f.bucket.notify(Note{.id = "desk", .text = "Green", .seq = 4});
  const auto before = query_matter(f.name, "note", "desk");
  REQUIRE(before.has_value());

  CHECK(f.bucket.update<Note>("desk", [](Note& n) { n.text = "Yellow"; }));
  auto got = f.bucket.get<Note>("desk");
  REQUIRE(got.has_value());
  CHECK(got->text == "Yellow");
  CHECK(got->seq == 4);
  auto after = query_matter(f.name, "note", "desk");
  CHECK(after->generation > before->generation);
}

TEST_CASE("concurrent updates of one matter lose no increment", "[notify]") {
  Fixture f;
  f.bucket.notify(Note{.id = "counter", .text = "", .seq = 0});
  constexpr int kThreads = 4, kEach = 50;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < kEach; ++i) f.bucket.update<Note>("counter", [](Note& n) { ++n.seq; });
    });
  for (auto& t : threads) t.join();
  CHECK(f.bucket.get<Note>("counter")->seq == kThreads * kEach);
}

TEST_CASE("update of a missing matter returns false and stores nothing", "[notify]") {
  Fixture f;
  bool called = false;
  CHECK_FALSE(f.bucket.update<Note>("ghost", [&](Note& n) {
    called = true;
    n.text = "boo";
  }));
  CHECK_FALSE(called);
  CHECK(count_matters(f.name) == 0);
}

TEST_CASE("update that changes the identity throws and changes nothing", "[notify]") {
  Fixture f;
  f.bucket.notify(Note{.id = "desk", .text = "Green", .seq = 4});
  const auto before = query_matter(f.name, "note", "desk");
  CHECK_THROWS_AS(f.bucket.update<Note>("desk", [](Note& n) { n.id = "chair"; }), dmm::InvalidArgument);
  auto after = query_matter(f.name, "note", "desk");
  REQUIRE(after.has_value());
  CHECK(after->state == before->state);
  CHECK(after->generation == before->generation);
  CHECK(query_phase(f.name, "note", "chair") == "(absent)");
}

TEST_CASE("remove deletes a matter of a type without finalize at once", "[notify]") {
  Fixture f;
  f.bucket.notify(Note{.id = "desk", .text = "Green"});
  f.bucket.notify(Note{.id = "lamp", .text = "On"});
  CHECK(f.bucket.remove<Note>("desk"));
  CHECK(query_phase(f.name, "note", "desk") == "(absent)");
  CHECK_FALSE(f.bucket.get<Note>("desk").has_value());
  CHECK(query_phase(f.name, "note", "lamp") == "pending");
  CHECK_FALSE(f.bucket.remove<Note>("desk"));
  CHECK_FALSE(f.bucket.remove<Note>("never-was"));
}
