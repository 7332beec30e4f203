#include "tokens/tokens.hpp"

#include <nats/nats.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fmt/format.h>
#include <fstream>
#include <sstream>
#include <string_view>
#include <spdlog/spdlog.h>

#include "dmm/errors.hpp"
#include "dmm/url.hpp"
#include "protocol/names.hpp"
#include "protocol/vocabulary.hpp"
#include "tokens/nkeys.hpp"

namespace dmm::detail {
namespace {

std::string nats_error(natsStatus s, jsErrCode jerr = static_cast<jsErrCode>(0)) {
  natsStatus last = NATS_OK;
  const char* text = nats_GetLastError(&last);
  std::string out = natsStatus_GetText(s);
  if (text && *text && last == s) out = fmt::format("{} ({})", out, text);
  if (jerr) out += fmt::format(" [JetStream error {}]", static_cast<int>(jerr));
  return mask_url(out);
}

// JetStream error of a publish to a subject that already holds its one
// message, on a stream created with DiscardNewPerSubject (dmm does not create
// such streams, but accepts one, e.g. the bench's --discard-new-per-subject).
constexpr int kAlreadyPending = 10077;

// Whether a server URL carries user info (user:password@ or token@).
bool has_user_info(std::string_view url) {
  const auto scheme = url.find("://");
  const auto host = scheme == std::string_view::npos ? 0 : scheme + 3;
  const auto at = url.find('@', host);
  return at != std::string_view::npos && at < url.find('/', host);
}

// The whole of a credentials file; InvalidArgument naming the option and the
// path (never the contents) if it cannot be read. The caller wipes it.
std::string read_secret_file(const std::string& path, const char* option, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  if (in) out << in.rdbuf();
  if (!in || in.bad())
    throw InvalidArgument(fmt::format("{}: {} '{}' cannot be read ({}); give the path of a readable file", what,
                                      option, path, std::strerror(errno)));
  return std::move(out).str();
}

void wipe(std::string& secret) {
  std::fill(secret.begin(), secret.end(), '\0');
  secret.clear();
}

// Checks the credentials options before nats.c sees them: one way to log in,
// files that can be read and hold a key. Returns the NKey public key of a
// seed file ("" without one).
std::string checked_credentials(const NatsEndpoint& e, const std::vector<std::string>& urls, const std::string& what) {
  if (!e.creds_file.empty() && !e.nkey_seed_file.empty())
    throw InvalidArgument(fmt::format("{}: nats_creds_file and nats_nkey_seed_file are both set; give one (a .creds "
                                      "file carries its own NKey seed)",
                                      what));
  const char* option = !e.creds_file.empty() ? "nats_creds_file" : !e.nkey_seed_file.empty() ? "nats_nkey_seed_file" : nullptr;
  if (!option) return "";
  for (const auto& u : urls)
    if (has_user_info(u))
      throw InvalidArgument(fmt::format("{}: the NATS URL {} carries a user and password (or token) and {} is set; "
                                        "give one way to log in: drop the user info from the URL, or unset {}",
                                        what, mask_url(u), option, option));
  const auto& path = !e.creds_file.empty() ? e.creds_file : e.nkey_seed_file;
  auto text = read_secret_file(path, option, what);
  auto seed = find_user_seed(text);
  const bool has_jwt = text.find("BEGIN NATS USER JWT") != std::string::npos;
  wipe(text);
  if (seed.empty())
    throw InvalidArgument(fmt::format("{}: {} '{}' holds no user NKey seed (a line SU...); give the file {} wrote",
                                      what, option, path, !e.creds_file.empty() ? "nsc generate creds" : "nk -gen user"));
  if (!e.creds_file.empty() && !has_jwt)
    throw InvalidArgument(fmt::format("{}: nats_creds_file '{}' holds no user JWT (-----BEGIN NATS USER JWT-----); "
                                      "for a bare NKey seed use nats_nkey_seed_file",
                                      what, path));
  std::string public_key;
  try {
    if (!e.nkey_seed_file.empty()) public_key = user_public_key(seed);
  } catch (const InvalidArgument& x) {
    wipe(seed);
    throw InvalidArgument(fmt::format("{}: nats_nkey_seed_file '{}': {}", what, path, x.what()));
  }
  wipe(seed);
  return public_key;
}

}  // namespace

natsConnection* connect_nats(const NatsEndpoint& endpoint, const std::string& client_name, bool reconnect,
                             const std::string& what) {
  const auto& url = endpoint.url;
  // natsOptions_SetURL takes one URL; a cluster is a comma-separated list.
  std::vector<std::string> urls;
  for (std::size_t begin = 0; begin <= url.size();) {
    auto end = std::min(url.find(',', begin), url.size());
    auto one = url.substr(begin, end - begin);
    one.erase(0, one.find_first_not_of(' '));
    one.erase(one.find_last_not_of(' ') + 1);
    if (!one.empty()) urls.push_back(one);
    begin = end + 1;
  }
  const auto nkey_public = checked_credentials(endpoint, urls, what);
  natsOptions* opts = nullptr;
  natsStatus s = natsOptions_Create(&opts);
  std::vector<const char*> servers;
  for (const auto& u : urls) servers.push_back(u.c_str());
  if (s == NATS_OK && servers.empty()) s = NATS_INVALID_ARG;
  if (s == NATS_OK)
    s = servers.size() == 1 ? natsOptions_SetURL(opts, servers[0])
                            : natsOptions_SetServers(opts, servers.data(), static_cast<int>(servers.size()));
  if (s == NATS_OK && !endpoint.ca_file.empty()) {
    s = natsOptions_SetSecure(opts, true);
    if (s == NATS_OK) s = natsOptions_LoadCATrustedCertificates(opts, endpoint.ca_file.c_str());
    if (s != NATS_OK) {
      natsOptions_Destroy(opts);
      throw ConnectionError(
          fmt::format("{}: cannot load the NATS CA file '{}': {}", what, endpoint.ca_file, nats_error(s)));
    }
  }
  if (s == NATS_OK && !endpoint.cert_file.empty()) {
    s = natsOptions_LoadCertificatesChain(opts, endpoint.cert_file.c_str(), endpoint.key_file.c_str());
    if (s != NATS_OK) {
      natsOptions_Destroy(opts);
      throw ConnectionError(fmt::format("{}: cannot load the NATS client certificate '{}' / key '{}': {}", what,
                                        endpoint.cert_file, endpoint.key_file, nats_error(s)));
    }
  }
  if (s == NATS_OK && !endpoint.creds_file.empty())
    s = natsOptions_SetUserCredentialsFromFiles(opts, endpoint.creds_file.c_str(), nullptr);
  if (s == NATS_OK && !endpoint.nkey_seed_file.empty())
    s = natsOptions_SetNKeyFromSeed(opts, nkey_public.c_str(), endpoint.nkey_seed_file.c_str());
  if (s == NATS_OK) s = natsOptions_SetName(opts, client_name.c_str());
  if (s == NATS_OK) s = natsOptions_SetTimeout(opts, 5000);
  // Keep trying forever once connected: tokens are an accelerator, and the
  // sweeper catches up after the server is back.
  if (s == NATS_OK && reconnect) s = natsOptions_SetMaxReconnect(opts, -1);
  if (s == NATS_OK && reconnect) s = natsOptions_SetReconnectWait(opts, 250);
  if (s == NATS_OK && reconnect) s = natsOptions_SetReconnectBufSize(opts, 8 * 1024 * 1024);
  natsConnection* conn = nullptr;
  if (s == NATS_OK) s = natsConnection_Connect(&conn, opts);
  natsOptions_Destroy(opts);
  if (s != NATS_OK)
    throw ConnectionError(fmt::format("cannot connect to NATS at {} for {}: {}; check the URL, that "
                                      "nats-server runs with -js, the credentials (user:password in the URL, "
                                      "nats_creds_file, nats_nkey_seed_file), and TLS settings (tls:// URL, "
                                      "nats_ca_file)",
                                      mask_url(url), what, nats_error(s)));
  return conn;
}

// nats.c's callbacks, which reach the private members of Nats.
struct NatsCallbacks {
  static void on_publish_error(jsCtx* js, jsPubAckErr* pae, void* closure);
};

Nats::Nats(const NatsEndpoint& endpoint, int replicas, const std::string& bucket, const std::string& client_name,
           spdlog::logger& log)
    : bucket_(bucket), url_(mask_url(endpoint.url)), replicas_(replicas), log_(log), errors_(log) {
  conn_ = connect_nats(endpoint, client_name, true, fmt::format("bucket '{}'", bucket_));
  natsStatus s = NATS_OK;
  jsOptions jo;
  jsOptions_Init(&jo);
  jo.Wait = 5000;
  jo.PublishAsync.MaxPending = 65536;
  jo.PublishAsync.ErrHandler = &NatsCallbacks::on_publish_error;
  jo.PublishAsync.ErrHandlerClosure = this;
  s = natsConnection_JetStream(&js_, conn_, &jo);
  if (s != NATS_OK) {
    natsConnection_Destroy(conn_);
    throw ConnectionError(fmt::format("NATS at {}: cannot open JetStream: {}", url_, nats_error(s)));
  }
  try {
    ensure_stream();
  } catch (...) {
    jsCtx_Destroy(js_);
    natsConnection_Destroy(conn_);
    throw;
  }
}

Nats::~Nats() {
  flush(std::chrono::milliseconds(2000));
  jsCtx_Destroy(js_);
  natsConnection_Destroy(conn_);
}

void Nats::ensure_stream() {
  const auto name = stream_name(bucket_);
  jsStreamInfo* si = nullptr;
  jsErrCode jerr = static_cast<jsErrCode>(0);
  natsStatus s = js_GetStreamInfo(&si, js_, name.c_str(), nullptr, &jerr);
  if (s == NATS_OK) {
    const bool usable = si->Config->Retention == js_WorkQueuePolicy && si->Config->MaxMsgsPerSubject == 1;
    jsStreamInfo_Destroy(si);
    if (!usable)
      throw Error(fmt::format("NATS stream {} exists but is not a WorkQueue stream with MaxMsgsPerSubject=1, which "
                              "bucket '{}' needs; delete it (`nats stream rm {}`: it holds only tokens, nothing is "
                              "lost) and open the bucket again",
                              name, bucket_, name));
    return;
  }
  if (s != NATS_NOT_FOUND && jerr != JSStreamNotFoundErr)
    throw ConnectionError(fmt::format("NATS at {}: cannot read stream {}: {}; is JetStream enabled (nats-server -js)?",
                                      url_, name, nats_error(s, jerr)));
  const auto subjects = bucket_subjects(bucket_);
  const char* subject_list[] = {subjects.c_str()};
  jsStreamConfig cfg;
  jsStreamConfig_Init(&cfg);
  cfg.Name = name.c_str();
  cfg.Subjects = subject_list;
  cfg.SubjectsLen = 1;
  cfg.Retention = js_WorkQueuePolicy;
  cfg.MaxMsgsPerSubject = 1;  // many notifies of one matter coalesce into one pending token
  // Discard stays "old": a re-sent token replaces the pending one. With
  // DiscardNewPerSubject (keep the pending one, reject the new publish with
  // JetStream error 10077), a token that is stuck in the stream cannot be
  // replaced by the sweeper: in one run of the fault suite's cluster scenario
  // (R3 stream, a node killed) nothing converged for 120 s with it. The
  // sweeper instead avoids re-sending tokens of a draining backlog (sweeper.cpp).
  cfg.Storage = js_FileStorage;
  cfg.Replicas = replicas_;
  s = js_AddStream(&si, js_, &cfg, nullptr, &jerr);
  if (s != NATS_OK) {
    throw ConnectionError(fmt::format("NATS at {}: cannot create stream {}: {}", url_, name, nats_error(s, jerr)));
  }
  jsStreamInfo_Destroy(si);
  log_.info("bucket '{}': created NATS stream {} ({}, {} replica(s))", bucket_, name, subjects, replicas_);
}

void Nats::ensure_consumers(const std::string& kind) {
  for (const auto& p : kPriorities) ensure_consumer(kind, p.priority);
}

void Nats::ensure_consumer(const std::string& kind, Priority priority) {
  const auto stream = stream_name(bucket_);
  const auto name = class_name(kind, priority);
  jsConsumerInfo* ci = nullptr;
  jsErrCode jerr = static_cast<jsErrCode>(0);
  natsStatus s = js_GetConsumerInfo(&ci, js_, stream.c_str(), name.c_str(), nullptr, &jerr);
  if (s == NATS_OK) {
    jsConsumerInfo_Destroy(ci);
    return;
  }
  if (s != NATS_NOT_FOUND && jerr != JSConsumerNotFoundErr)
    throw ConnectionError(fmt::format("NATS at {}: cannot read consumer {} of stream {}: {}", url_, name, stream,
                                      nats_error(s, jerr)));
  const auto filter = kind_subjects(bucket_, kind, priority);
  jsConsumerConfig cc;
  jsConsumerConfig_Init(&cc);
  cc.Durable = name.c_str();
  cc.FilterSubject = filter.c_str();
  cc.AckPolicy = js_AckExplicit;
  cc.DeliverPolicy = js_DeliverAll;
  // Tokens are acked right after their matters are claimed; a worker that dies
  // in between leaves them to be redelivered after this (or re-sent by a
  // sweeper sooner).
  cc.AckWait = static_cast<int64_t>(30) * 1000 * 1000 * 1000;
  cc.MaxAckPending = 65536;
  cc.MaxDeliver = -1;
  s = js_AddConsumer(&ci, js_, stream.c_str(), &cc, nullptr, &jerr);
  if (s != NATS_OK)
    throw ConnectionError(fmt::format("NATS at {}: cannot create consumer {} on stream {}: {}", url_, name, stream,
                                      nats_error(s, jerr)));
  jsConsumerInfo_Destroy(ci);
  log_.info("bucket '{}': created NATS consumer {} ({})", bucket_, name, filter);
}

std::optional<Nats::Backlog> Nats::backlog(const std::string& kind, Priority priority) {
  const auto stream = stream_name(bucket_);
  const auto name = class_name(kind, priority);
  if (!connected()) return std::nullopt;
  jsOptions jo;
  jsOptions_Init(&jo);
  jo.Wait = 1000;
  jsConsumerInfo* ci = nullptr;
  jsErrCode jerr = static_cast<jsErrCode>(0);
  if (js_GetConsumerInfo(&ci, js_, stream.c_str(), name.c_str(), &jo, &jerr) != NATS_OK) return std::nullopt;
  Backlog b{ci->NumPending, ci->Delivered.Consumer};
  jsConsumerInfo_Destroy(ci);
  return b;
}

void Nats::publish(const std::string& kind, Priority priority, const std::vector<std::int64_t>& ids) noexcept {
  if (ids.empty()) return;
  try {
    for (const auto& token : token_messages(bucket_, kind, ids, priority)) {
      const natsStatus s = js_PublishAsync(js_, token.subject.c_str(), token.payload.data(),
                                           static_cast<int>(token.payload.size()), nullptr);
      if (s == NATS_OK) continue;
      ++publish_errors_;
      if (count_error_) count_error_(kind);
      // Rate-limited: when NATS is down every publish fails, and the sweeper
      // will resend them all anyway.
      errors_.warn("bucket '{}': cannot publish token {} to NATS at {}: {} (the sweeper will resend it)", bucket_,
                  token.subject, url_, nats_error(s));
    }
  } catch (const std::exception& e) {  // out of memory formatting the tokens
    ++publish_errors_;
    log_.warn("bucket '{}': cannot publish tokens of kind '{}': {} (the sweeper will resend them)", bucket_, kind,
              e.what());
  }
}

bool Nats::connected() { return natsConnection_Status(conn_) == NATS_CONN_STATUS_CONNECTED; }

void Nats::flush(std::chrono::milliseconds timeout) noexcept {
  jsPubOptions po;
  jsPubOptions_Init(&po);
  po.MaxWait = timeout.count();
  js_PublishAsyncComplete(js_, &po);
}

void NatsCallbacks::on_publish_error(jsCtx*, jsPubAckErr* pae, void* closure) {
  auto* self = static_cast<Nats*>(closure);
  // "maximum messages per subject exceeded": the matter's token is still
  // pending, which is all a publish wants; not an error.
  if (static_cast<int>(pae->ErrCode) == kAlreadyPending ||
      (pae->ErrText && std::string_view(pae->ErrText).find("maximum messages per subject") != std::string_view::npos))
    return;
  ++self->publish_errors_;
  if (self->count_error_ && pae->Msg) {
    // dmm.<bucket>.<class name>.<row id> or dmm.<bucket>.<class name>.<first>.<last>
    const std::string subject = natsMsg_GetSubject(pae->Msg);
    const auto first = subject.find('.', subject.find('.') + 1);
    const auto last = first == std::string::npos ? first : subject.find('.', first + 1);
    if (last != std::string::npos)
      self->count_error_(kind_of_class_name(std::string_view(subject).substr(first + 1, last - first - 1)));
  }
  self->errors_.warn("bucket '{}': NATS did not accept a token: {} (the sweeper will resend it)", self->bucket_,
                    pae->ErrText ? pae->ErrText : natsStatus_GetText(pae->Err));
}

Token::~Token() { natsMsg_Destroy(msg_); }

std::string_view Token::subject() const { return natsMsg_GetSubject(msg_); }

std::string_view Token::payload() const {
  const char* data = natsMsg_GetData(msg_);
  return data ? std::string_view(data, static_cast<std::size_t>(natsMsg_GetDataLength(msg_))) : std::string_view();
}

// What natsMsg_Ack/natsMsg_Nak send, without their check that the message
// came through a JetStream subscription (ours come through a plain one).
bool Token::answer(std::string_view what) {
  if (answered_) return true;
  const char* reply = natsMsg_GetReply(msg_);
  if (!reply) return false;
  if (natsConnection_Publish(conn_, reply, what.data(), static_cast<int>(what.size())) != NATS_OK) return false;
  answered_ = true;
  return true;
}

bool Token::ack() { return answer("+ACK"); }

bool Token::nak() { return answer("-NAK"); }

TokenSource::TokenSource(Nats& nats, const std::string& kind, Priority priority) : conn_(nats.connection()) {
  nats.ensure_consumer(kind, priority);
  const auto name = class_name(kind, priority);
  next_ = fmt::format("$JS.API.CONSUMER.MSG.NEXT.{}.{}", stream_name(nats.bucket()), name);
  natsInbox* inbox = nullptr;
  natsStatus s = natsInbox_Create(&inbox);
  if (s == NATS_OK) {
    inbox_ = inbox;
    natsInbox_Destroy(inbox);
    s = natsConnection_SubscribeSync(&sub_, conn_, (inbox_ + ".*").c_str());
  }
  if (s != NATS_OK)
    throw ConnectionError(fmt::format("bucket '{}': cannot subscribe to consumer {}: {}", nats.bucket(), name,
                                      nats_error(s)));
}

TokenSource::~TokenSource() {
  // The consumer is durable and bound by name: unsubscribing deletes nothing.
  // Not a bare natsSubscription_Destroy while the connection lives on: up to
  // nats.c 3.5 (fixed in 3.6.0, nats-io/nats.c#637/#638; Debian 12 ships
  // 3.4.1) natsConn_processMsg looks the subscription up in the connection's
  // map, unlocks the map, builds the message and only then locks the
  // subscription, holding no reference to it: a Destroy in between frees it
  // under the read loop, which then locks a freed mutex and links the message
  // into freed memory (heap corruption, e.g. glibc's "corrupted double-linked
  // list" later). A message for this subscription can be in flight whenever
  // the dispatcher stops or resets the source after an error: a token, or the
  // server's 408 status of a pull request that expired just as the fetch gave
  // up. So: unsubscribe (the subscription leaves the map but stays allocated;
  // a message the read loop already holds is dropped as closed), then flush:
  // the read loop handles the PONG only after every message that came before
  // it, so once the flush returns it holds no pointer to this subscription
  // and freeing it is safe. Not connected: nothing is being read (and a flush
  // would only wait out its timeout).
  if (natsSubscription_Unsubscribe(sub_) == NATS_OK && natsConnection_Status(conn_) == NATS_CONN_STATUS_CONNECTED)
    natsConnection_FlushTimeout(conn_, 1000);
  natsSubscription_Destroy(sub_);
}

// One pull request for up to `max` tokens, appended to `out`. With `no_wait`
// the server answers at once with what is pending (possibly nothing).
//
// Why not natsSubscription_FetchRequest (docs/RELIABILITY.md, "Partitions"):
// nats.c 3.4.1's fetch allocates room for `Batch` messages, first takes the
// messages already waiting in the subscription (k of them), then asks the
// server for Batch - k, stores that into req->Batch and loops until
// `count == req->Batch`. With k > Batch - k that never holds: it stores every
// message that arrives until its deadline past the end of its array,
// corrupting the heap. Messages do wait in the subscription after a frozen or
// cut link heals: the pull requests sent meanwhile reach the server late and
// are answered when no fetch is waiting (ASan: a read past a block that
// _fetch calloc'ed; glibc: "double free or corruption" later, elsewhere).
// So this pulls as nats.c does (same request, same statuses), into a vector.
void TokenSource::pull(int max, bool no_wait, std::chrono::milliseconds timeout, std::vector<Token>& out) {
  const auto reply = fmt::format("{}.{}", inbox_, ++requests_);
  // As nats.c: the server expires the request a little before we stop waiting.
  auto expires = std::chrono::duration_cast<std::chrono::nanoseconds>(timeout).count();
  if (expires >= 20'000'000) expires -= 10'000'000;
  const auto request =
      fmt::format(R"({{"batch":{},"expires":{}{}}})", max, expires, no_wait ? R"(,"no_wait":true)" : "");
  natsStatus s = natsConnection_PublishRequest(conn_, next_.c_str(), reply.c_str(), request.data(),
                                               static_cast<int>(request.size()));
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (int got = 0; s == NATS_OK && got < max;) {
    const auto left =
        std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0) return;
    natsMsg* msg = nullptr;
    s = natsSubscription_NextMsg(&msg, sub_, left);
    if (s == NATS_TIMEOUT) return;
    if (s == NATS_SLOW_CONSUMER) {  // tokens were dropped; they come back after AckWait
      s = NATS_OK;
      continue;
    }
    if (s != NATS_OK) break;
    const char* status = nullptr;
    if (natsMsg_GetDataLength(msg) > 0 || natsMsgHeader_Get(msg, "Status", &status) != NATS_OK) {
      out.emplace_back(msg, conn_);  // a token; one answering an earlier request is as good
      ++got;
      continue;
    }
    // A status. An earlier request's end or an idle heartbeat: go on. This
    // request's end: 404 nothing pending, 408 expired. Else (409 "Exceeded
    // MaxWaiting", "Consumer Deleted", 503 no responders) an error, unless
    // tokens came.
    const std::string code = status;
    const char* description = nullptr;
    natsMsgHeader_Get(msg, "Description", &description);
    const std::string what = description ? code + " " + description : code;
    const bool ours = reply == natsMsg_GetSubject(msg);
    natsMsg_Destroy(msg);
    if (!ours || code == "100") continue;
    if (code == "404" || code == "408" || got > 0) return;
    throw Error(fmt::format("fetching tokens failed: {}", what));
  }
  if (s == NATS_OK) return;
  broken_ = s == NATS_INVALID_SUBSCRIPTION || s == NATS_CONNECTION_CLOSED;
  throw Error(fmt::format("fetching tokens failed: {}", nats_error(s)));
}

// A waiting pull request for a whole batch is held by the server until the
// batch fills or the request expires, and the tokens that arrived meanwhile
// wait in it: at low rates every token would wait out the timeout. So take
// what is pending now; if nothing is, wait for one token only and return it
// at once: whatever arrived with it is taken by the next fetch, right after
// this one's claim. (Asking for the rest first cost every token that woke an
// idle worker a round trip to the server before its claim.)
std::vector<Token> TokenSource::fetch(int max, std::chrono::milliseconds timeout) {
  std::vector<Token> tokens;
  pull(max, true, timeout, tokens);
  if (tokens.empty()) pull(1, false, timeout, tokens);
  return tokens;
}

}  // namespace dmm::detail
