// The JetStream side: one connection per bucket, the bucket's stream, one
// durable pull consumer per kind and priority class (names.hpp), and token
// publish/fetch/ack. Tokens only say
// "look at row N"; they may be lost, duplicated or coalesced.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dmm/options.hpp"
#include "support/rate_limited_log.hpp"

// nats.c's handle types, declared as nats.h does: only tokens/*.cpp include
// nats.h (docs/DESIGN.md, "Layout").
typedef struct __natsConnection natsConnection;
typedef struct __natsSubscription natsSubscription;
typedef struct __natsMsg natsMsg;
typedef struct __jsCtx jsCtx;

namespace dmm::detail {

// Where a NATS server or cluster is: a URL, or several comma-separated (a
// cluster), the TLS files and the credentials files (empty: none), as in
// BucketOptions. One way to connect, for the engine and for dmmctl alike.
struct NatsEndpoint {
  std::string url;
  std::string ca_file, cert_file, key_file;
  std::string creds_file, nkey_seed_file;
};

class Nats {
 public:
  // Connects (ConnectionError naming the masked URL on failure) and creates
  // or checks the bucket's stream.
  // `replicas`: of the stream, when it is created.
  Nats(const NatsEndpoint& endpoint, int replicas, const std::string& bucket, const std::string& client_name,
       spdlog::logger& log);
  ~Nats();
  Nats(const Nats&) = delete;
  Nats& operator=(const Nats&) = delete;

  // Creates the stream if missing; dmm::Error if one of that name exists with
  // a configuration dmm cannot work with.
  void ensure_stream();
  // Creates the durable consumers of the kind's classes that are missing.
  void ensure_consumers(const std::string& kind);
  void ensure_consumer(const std::string& kind, Priority priority);

  // Tokens of the kind's class waiting in the stream (not yet delivered) and
  // how many its consumer has delivered so far; nullopt if NATS cannot tell
  // now.
  struct Backlog {
    std::uint64_t pending = 0;
    std::uint64_t delivered = 0;
  };
  std::optional<Backlog> backlog(const std::string& kind, Priority priority);

  // Asynchronous publish of the tokens for `ids` in class `priority` (one
  // per matter for a single id, else up to kMaxIdsPerToken per token,
  // names.hpp); failures are logged and counted, never thrown (the sweeper
  // re-sends). Thread-safe.
  void publish(const std::string& kind, Priority priority, const std::vector<std::int64_t>& ids) noexcept;
  // Waits up to `timeout` for outstanding publishes to be acknowledged.
  void flush(std::chrono::milliseconds timeout) noexcept;
  // Publish errors seen since the last call (the sweeper re-checks the
  // stream when there were any).
  std::uint64_t take_publish_errors() { return publish_errors_.exchange(0); }
  // Called with the kind of every publish that fails from now on (set once,
  // before the first publish; it must be thread-safe).
  void on_publish_error(std::function<void(std::string_view kind)> count) { count_error_ = std::move(count); }
  // True while the connection to NATS is up (not reconnecting or closed).
  bool connected();

  const std::string& bucket() const { return bucket_; }
  jsCtx* js() { return js_; }
  natsConnection* connection() { return conn_; }

 private:
  friend struct NatsCallbacks;

  const std::string bucket_;
  const std::string url_;  // masked
  const int replicas_;
  spdlog::logger& log_;
  natsConnection* conn_ = nullptr;  // thread-safe per nats.c
  jsCtx* js_ = nullptr;
  std::atomic<std::uint64_t> publish_errors_{0};
  std::function<void(std::string_view kind)> count_error_;  // set once before publishing
  RateLimitedLog errors_;
};

// A fetched token. Acking is asynchronous and idempotent: an ack or nak is a
// publish to the token's reply subject on `conn`, which outlives the token.
class Token {
 public:
  Token(natsMsg* msg, natsConnection* conn) : msg_(msg), conn_(conn) {}
  Token(Token&& o) noexcept : msg_(o.msg_), conn_(o.conn_), answered_(o.answered_) { o.msg_ = nullptr; }
  Token& operator=(Token&&) = delete;
  ~Token();
  std::string_view subject() const;
  std::string_view payload() const;
  // False if the ack could not be sent (the token comes back after AckWait).
  bool ack();
  // Hands the token back for redelivery now (to this process or another).
  bool nak();

 private:
  bool answer(std::string_view what);

  natsMsg* msg_;
  natsConnection* conn_;
  bool answered_ = false;  // acked or nak'ed: later answers are no-ops
};

// Pulls the tokens of one kind's class from its durable consumer: pull
// requests of our own to the consumer, answered on an inbox of this source.
// Not nats.c's natsSubscription_Fetch: in 3.4.1 it overruns its own array
// after a partition (docs/RELIABILITY.md, "Partitions"; tokens.cpp, pull()).
class TokenSource {
 public:
  TokenSource(Nats& nats, const std::string& kind, Priority priority);
  ~TokenSource();
  TokenSource(const TokenSource&) = delete;
  TokenSource& operator=(const TokenSource&) = delete;

  // Up to `max` tokens, waiting at most `timeout` for the first. An empty
  // result is normal. dmm::Error when the fetch failed: the server went away
  // or refused (the caller keeps the source, which nats.c resubscribes after
  // a reconnect, and tries again), or the subscription is broken (broken()).
  std::vector<Token> fetch(int max, std::chrono::milliseconds timeout);
  // The subscription itself is unusable (closed): the caller re-creates the
  // source. Nothing reads for a closed subscription, so freeing it is safe.
  bool broken() const { return broken_; }

 private:
  void pull(int max, bool no_wait, std::chrono::milliseconds timeout, std::vector<Token>& out);

  natsConnection* conn_ = nullptr;  // the bucket's; outlives this source
  natsSubscription* sub_ = nullptr;  // on inbox_.*
  std::string next_;                 // the consumer's "next messages" API subject
  std::string inbox_;
  std::uint64_t requests_ = 0;       // pull requests sent; the last is answered on inbox_.<requests_>
  bool broken_ = false;
};

}  // namespace dmm::detail

namespace dmm::detail {

// Opens a connection to `endpoint` (a cluster when the URL lists several),
// with TLS when files are given, logging in with the .creds or NKey seed
// file if one is given; ConnectionError naming the masked URL and `what`
// (e.g. "bucket 'music'") on failure. InvalidArgument naming the option and
// the file (never its contents) for a credentials file that cannot be read
// or holds no key, and for two ways to log in at once. `reconnect`: keep reconnecting
// forever once connected (the engine); else fail fast (tools). The caller
// destroys it with natsConnection_Destroy.
natsConnection* connect_nats(const NatsEndpoint& endpoint, const std::string& client_name, bool reconnect,
                             const std::string& what);

}  // namespace dmm::detail
