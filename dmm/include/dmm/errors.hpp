// Errors dmm raises at its boundary. Every message names the object it is
// about (bucket, kind, identity, URL with the password masked) and the way out.
#pragma once

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <string>

namespace dmm {

// Base of every error dmm throws on purpose.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A bad name, identity, state or option. Nothing was stored.
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

// PostgreSQL or NATS could not be reached or refused us (wrong credentials,
// TLS mismatch), or the connection broke during a call (the message says
// whether the call may have taken effect). The URL in the message has its
// password masked.
class ConnectionError : public Error {
 public:
  using Error::Error;
};

// PostgreSQL refused a statement of an API call (a full disk, a statement
// timeout, ...). sqlstate() is PostgreSQL's error code ("53100": disk full).
// The call's transaction was rolled back: nothing of it took effect.
class DatabaseError : public Error {
 public:
  DatabaseError(const std::string& what, std::string sqlstate) : Error(what), sqlstate_(std::move(sqlstate)) {}
  const std::string& sqlstate() const noexcept { return sqlstate_; }

 private:
  std::string sqlstate_;
};

// The schema in PostgreSQL does not match the migrations this build embeds
// (for example an applied migration was edited afterwards).
class MigrationError : public Error {
 public:
  using Error::Error;
};

// Thrown by a materializer (or finalizer) to say "retrying will not help":
// the matter is marked `failed` and left alone until its state changes through
// a notify or update, or until it is retried explicitly (Bucket::retry).
// Any other exception means "retry with backoff".
class TerminalError : public Error {
 public:
  using Error::Error;
};

// Thrown by a materializer (or finalizer) that knows when to try again, such
// as an HTTP 429 with Retry-After: the next attempt comes after `delay`
// instead of the kind's backoff. It is a failed attempt like any other (it
// counts towards KindOptions::max_attempts). The delay is at least 1 ms and
// at most kMaxDelay (a longer one is cut to it).
class RetryAfter : public Error {
 public:
  static constexpr std::chrono::milliseconds kMaxDelay = std::chrono::hours(24);

  RetryAfter(std::chrono::milliseconds delay, const std::string& what)
      : Error(what), delay_(std::clamp(delay, std::chrono::milliseconds(1), kMaxDelay)) {}
  std::chrono::milliseconds delay() const noexcept { return delay_; }

 private:
  std::chrono::milliseconds delay_;
};

// Thrown by Context::checkpoint when this attempt no longer holds the
// matter's lease (it expired, or the process is cut off): whatever the
// attempt does next is dropped, so it should return at once.
class LeaseLost : public Error {
 public:
  using Error::Error;
};

}  // namespace dmm
