// Credentials and TLS: PostgreSQL passwords and sslmode, NATS user/password
// and TLS, through the usual URL forms (certificates made here and by
// scripts/dev-env). No password may appear in any log line or error.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <spdlog/sinks/ostream_sink.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "harness.hpp"
#include "probe.hpp"

using namespace dmm_test;

namespace {

struct Lock {
  std::string id;
  bool locked = false;
  bool done = false;
  std::string identity() const { return id; }
  dmm::Result materialize(dmm::Context&) {
    done = true;
    return dmm::Result::done();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Lock, id, locked, done)

constexpr const char* kPgPassword = "pg-Secret-71q";
constexpr const char* kNatsPassword = "nats-Secret-93z";

// Everything the library logs during a test, to grep for passwords.
struct CapturedLog {
  std::ostringstream out;
  std::shared_ptr<spdlog::logger> logger;
  CapturedLog() {
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out);
    logger = std::make_shared<spdlog::logger>("security", sink);
    logger->set_level(spdlog::level::trace);
  }
  std::string text() {
    logger->flush();
    return out.str();
  }
};

int pg_port() {
  const char* port = std::getenv("DMM_PG_PORT");
  if (!port) FAIL("DMM_PG_PORT is not set: run the tests through scripts/test (scripts/dev-env writes it)");
  return std::atoi(port);
}

std::string pg_ca() {
  const char* ca = std::getenv("DMM_PG_CA");
  if (!ca || !std::filesystem::exists(ca))
    FAIL("DMM_PG_CA is not set or missing: run the tests through scripts/test (scripts/dev-env makes it)");
  return ca;
}

// The role the dev-env's pg_hba.conf makes log in with a password.
void ensure_password_role() {
  pqxx::nontransaction tx(pg());
  tx.exec("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'dmm_pw') THEN "
          "CREATE ROLE dmm_pw LOGIN SUPERUSER; END IF; END $$");
  tx.exec(std::string("ALTER ROLE dmm_pw PASSWORD '") + kPgPassword + "'");
}

bool port_answers(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return ok;
}

// A private nats-server with JetStream and extra flags (auth, TLS), on
// `port` if given (a restart), else on a free one.
struct PrivateNats {
  std::filesystem::path dir;
  int port;
  std::unique_ptr<Process> server;
  explicit PrivateNats(std::vector<std::string> extra, int on_port = 0) : port(on_port ? on_port : closed_port()) {
    dir = std::filesystem::temp_directory_path() / unique_name("nats");
    std::filesystem::create_directories(dir);
    std::vector<std::string> args = {"-js", "-a", "127.0.0.1", "-p", std::to_string(port), "-sd", (dir / "js").string(),
                                     "-l", (dir / "nats.log").string()};
    args.insert(args.end(), extra.begin(), extra.end());
    server = std::make_unique<Process>("/usr/sbin/nats-server", args);
    wait_until([&] { return port_answers(port); }, 10s, "private nats-server to listen");
  }
  ~PrivateNats() {
    server.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
};

// A self-signed certificate for 127.0.0.1 in `dir` (cert.pem, key.pem).
void make_certificate(const std::filesystem::path& dir) {
  const auto cmd = "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 "
                   "-addext subjectAltName=IP:127.0.0.1 -keyout " +
                   (dir / "key.pem").string() + " -out " + (dir / "cert.pem").string() + " >/dev/null 2>&1";
  REQUIRE(std::system(cmd.c_str()) == 0);
}

// A bucket with one ready matter, stored through the trusted test URLs.
std::string stored_bucket(const std::string& prefix) {
  const auto name = unique_name(prefix);
  auto bucket = open_bucket(name);
  bucket.register_kind<Lock>("lock", fast_kind());
  bucket.notify(Lock{.id = "back-door", .locked = true});
  Runner runner(bucket);
  wait_until([&] { return query_phase(name, "lock", "back-door") == "ready"; }, 20s, "back-door to be ready");
  return name;
}

// Opens a bucket, notifies one matter and waits until a worker made it ready.
void converge_one(dmm::BucketOptions options) {
  auto bucket = dmm::Bucket::open(options);
  bucket.register_kind<Lock>("lock", fast_kind());
  Runner runner(bucket);
  bucket.notify(Lock{.id = "front-door", .locked = true});
  wait_until([&] { return query_phase(options.name, "lock", "front-door") == "ready"; }, 20s,
             "the matter to be ready");
}

std::string nats_binary_check() {
  if (!std::filesystem::exists("/usr/sbin/nats-server")) FAIL("nats-server is not installed: run scripts/setup");
  return "/usr/sbin/nats-server";
}

}  // namespace

TEST_CASE("PostgreSQL with a password and sslmode=verify-full works, and the password is never shown",
          "[security]") {
  ensure_password_role();
  CapturedLog log;
  const auto name = unique_name("pgtls");
  const auto url = "postgresql://dmm_pw:" + std::string(kPgPassword) + "@127.0.0.1:" + std::to_string(pg_port()) +
                   "/dmm?sslmode=verify-full&sslrootcert=" + pg_ca();
  dmm::BucketOptions o{.name = name, .postgres = url, .nats = servers().nats, .logger = log.logger};
  converge_one(o);
  pqxx::connection check(url);
  pqxx::nontransaction tx(check);
  CHECK(tx.exec1("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")[0].as<bool>());
  CHECK(log.text().find(kPgPassword) == std::string::npos);
}

TEST_CASE("a wrong PostgreSQL password is a ConnectionError that masks the password", "[security]") {
  ensure_password_role();
  CapturedLog log;
  const auto name = stored_bucket("pgwrong");
  const auto before = stored_snapshot(name);
  const std::string wrong = "Wrong-Pass-55";
  const auto url = "postgresql://dmm_pw:" + wrong + "@127.0.0.1:" + std::to_string(pg_port()) + "/dmm";
  try {
    dmm::Bucket::open({.name = name, .postgres = url, .nats = servers().nats, .logger = log.logger});
    FAIL("open succeeded with a wrong password");
  } catch (const dmm::ConnectionError& e) {
    const std::string what = e.what();
    CHECK(what.find(wrong) == std::string::npos);
    CHECK(what.find("dmm_pw:****@") != std::string::npos);
    CHECK(what.find("password authentication failed") != std::string::npos);
  }
  CHECK(log.text().find(wrong) == std::string::npos);
  CHECK(stored_snapshot(name) == before);
}

TEST_CASE("sslmode=verify-full with a CA that did not sign the server's certificate is refused", "[security]") {
  const auto dir = std::filesystem::temp_directory_path() / unique_name("otherca");
  std::filesystem::create_directories(dir);
  make_certificate(dir);
  const auto name = stored_bucket("pgca");
  const auto before = stored_snapshot(name);
  const auto url = "postgresql://postgres@127.0.0.1:" + std::to_string(pg_port()) +
                   "/dmm?sslmode=verify-full&sslrootcert=" + (dir / "cert.pem").string();
  CHECK_THROWS_AS(dmm::Bucket::open({.name = name, .postgres = url, .nats = servers().nats}), dmm::ConnectionError);
  CHECK(stored_snapshot(name) == before);
  std::filesystem::remove_all(dir);
}

TEST_CASE("NATS with user and password works, and a wrong password is masked", "[security]") {
  nats_binary_check();
  PrivateNats nats({"--user", "dmm", "--pass", kNatsPassword});
  CapturedLog log;
  const auto good = "nats://dmm:" + std::string(kNatsPassword) + "@127.0.0.1:" + std::to_string(nats.port);
  const auto name = unique_name("natsauth");
  converge_one({.name = name, .postgres = servers().postgres, .nats = good, .logger = log.logger});
  const auto before = stored_snapshot(name);
  REQUIRE_FALSE(before.empty());

  const std::string wrong = "not-the-Pass-12";
  try {
    dmm::Bucket::open({.name = name,
                       .postgres = servers().postgres,
                       .nats = "nats://dmm:" + wrong + "@127.0.0.1:" + std::to_string(nats.port),
                       .logger = log.logger});
    FAIL("open succeeded with a wrong NATS password");
  } catch (const dmm::ConnectionError& e) {
    const std::string what = e.what();
    CHECK(what.find(wrong) == std::string::npos);
    CHECK(what.find("dmm:****@") != std::string::npos);
  }
  const auto text = log.text();
  CHECK(text.find(kNatsPassword) == std::string::npos);
  CHECK(text.find(wrong) == std::string::npos);
  CHECK(stored_snapshot(name) == before);
}

TEST_CASE("NATS over TLS works with the CA, and is refused without it or over plain nats://", "[security]") {
  nats_binary_check();
  const auto certs = std::filesystem::temp_directory_path() / unique_name("natscert");
  std::filesystem::create_directories(certs);
  make_certificate(certs);
  PrivateNats nats({"--tls", "--tlscert", (certs / "cert.pem").string(), "--tlskey", (certs / "key.pem").string()});
  const auto port = std::to_string(nats.port);

  const auto name = unique_name("natstls");
  converge_one({.name = name,
                .postgres = servers().postgres,
                .nats = "tls://127.0.0.1:" + port,
                .nats_ca_file = (certs / "cert.pem").string()});
  const auto before = stored_snapshot(name);
  REQUIRE_FALSE(before.empty());
  // dmmctl stats reads the consumers through the same connect path.
  auto stats = dmm::kind_stats(servers().postgres, name);
  REQUIRE_FALSE(stats.empty());
  dmm::stream_stats(stats, "tls://127.0.0.1:" + port, name, {.ca_file = (certs / "cert.pem").string()});
  CHECK(stats.front().tokens_pending.has_value());
  CHECK_THROWS_AS(dmm::stream_stats(stats, "tls://127.0.0.1:" + port, name), dmm::ConnectionError);
  // Without the CA the self-signed certificate is not trusted.
  CHECK_THROWS_AS(
      dmm::Bucket::open({.name = name, .postgres = servers().postgres, .nats = "tls://127.0.0.1:" + port}),
      dmm::ConnectionError);
  // A plain client is refused by a server that requires TLS.
  CHECK_THROWS_AS(
      dmm::Bucket::open({.name = name, .postgres = servers().postgres, .nats = "nats://127.0.0.1:" + port}),
      dmm::ConnectionError);
  CHECK(stored_snapshot(name) == before);
  std::filesystem::remove_all(certs);
}

TEST_CASE("a worker process logging at trace level never prints a password, working or failing", "[security]") {
  nats_binary_check();
  ensure_password_role();
  auto nats = std::make_unique<PrivateNats>(std::vector<std::string>{"--user", "dmm", "--pass", kNatsPassword});
  const int nats_port = nats->port;
  const auto pg_url_with = [&](const std::string& password) {
    return "postgresql://dmm_pw:" + password + "@127.0.0.1:" + std::to_string(pg_port()) +
           "/dmm?sslmode=verify-full&sslrootcert=" + pg_ca();
  };
  const auto nats_url_with = [&](const std::string& password) {
    return "nats://dmm:" + password + "@127.0.0.1:" + std::to_string(nats_port);
  };
  const std::string wrong_pg = "Wrong-pg-Pass-31", wrong_nats = "Wrong-nats-Pass-47";
  const auto name = unique_name("pwgrep");
  const auto log_path = std::filesystem::temp_directory_path() / (name + ".log");
  struct RemoveLog {
    std::filesystem::path path;
    ~RemoveLog() {
      std::error_code ec;
      std::filesystem::remove(path, ec);
    }
  } remove_log{log_path};
  auto log_text = [&] {
    std::ifstream in(log_path);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  // dmm_test_worker with both its stdout and stderr appended to the file,
  // logging at trace level.
  auto worker = [&](const std::string& pg_url, const std::string& nats_url) {
    return std::make_unique<Process>(
        "/bin/sh", std::vector<std::string>{"-c", "log=$1; shift; exec \"$@\" >>\"$log\" 2>&1", "sh",
                                            log_path.string(), "/usr/bin/env", "DMM_TEST_LOG_LEVEL=trace",
                                            worker_binary(), "--postgres", pg_url, "--nats", nats_url, "--bucket", name,
                                            "--worker-id", "pw-worker", "--lease-ms", "2000"});
  };

  // Working: a matter converges, NATS goes away and comes back empty.
  auto good = worker(pg_url_with(kPgPassword), nats_url_with(kNatsPassword));
  wait_until([&] { return log_text().find("ready") != std::string::npos; }, 20s, "the worker to be ready",
             [&] { return log_text(); });
  auto bucket = open_bucket(name, [&](dmm::BucketOptions& o) {
    o.postgres = pg_url_with(kPgPassword);
    o.nats = nats_url_with(kNatsPassword);
  });
  bucket.register_kind<Probe>("probe", fast_kind());
  bucket.notify(Probe{.id = "gate", .seq = 1});
  wait_until([&] { return query_phase(name, "probe", "gate") == "ready"; }, 20s, "gate to be ready",
             [&] { return describe_unconverged(name); });
  nats.reset();
  bucket.notify(Probe{.id = "gate", .seq = 2});
  nats = std::make_unique<PrivateNats>(std::vector<std::string>{"--user", "dmm", "--pass", kNatsPassword}, nats_port);
  wait_until([&] { return query_matter(name, "probe", "gate")->state["seq"] == 2 &&
                          query_phase(name, "probe", "gate") == "ready"; },
             60s, "gate to converge after the NATS restart", [&] { return describe_unconverged(name); });
  good->kill(SIGTERM);
  CHECK(good->wait(20s) == 0);

  // Failing: wrong passwords make the worker exit with an error naming the
  // server, password masked.
  auto bad_nats = worker(pg_url_with(kPgPassword), nats_url_with(wrong_nats));
  CHECK(bad_nats->wait(20s) == 1);
  auto bad_pg = worker(pg_url_with(wrong_pg), nats_url_with(kNatsPassword));
  CHECK(bad_pg->wait(20s) == 1);

  const auto text = log_text();
  INFO("the worker printed:\n" << text.substr(0, 4000));
  CHECK(text.find("[debug]") != std::string::npos);  // it logged at its most verbose
  CHECK(text.find("nats://dmm:****@127.0.0.1") != std::string::npos);
  CHECK(text.find("postgresql://dmm_pw:****@127.0.0.1") != std::string::npos);
  for (const auto& password : {std::string(kPgPassword), std::string(kNatsPassword), wrong_pg, wrong_nats})
    CHECK(text.find(password) == std::string::npos);
}

namespace {

// tests/support/nkeys.py (Python's cryptography) writes NKeys and JWTs as
// nk and nsc would; `what` is "user" or "creds".
std::filesystem::path make_keys(const std::string& what) {
  const auto dir = std::filesystem::temp_directory_path() / unique_name("nkeys");
  const auto script = std::filesystem::path(__FILE__).parent_path().parent_path() / "support" / "nkeys.py";
  Process gen("/usr/bin/python3", {script.string(), what, dir.string()});
  REQUIRE(gen.wait(30s) == 0);
  return dir;
}

std::string file_text(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::string text(std::istreambuf_iterator<char>(in), {});
  while (!text.empty() && text.back() == '\n') text.pop_back();
  return text;
}

void write_file(const std::filesystem::path& path, const std::string& text) {
  std::ofstream(path) << text;
}

// The secrets of a .creds file: its JWT and its seed.
std::vector<std::string> creds_secrets(const std::filesystem::path& creds) {
  std::istringstream in(file_text(creds));
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);)
    if (line.rfind("eyJ", 0) == 0 || line.rfind("SU", 0) == 0) out.push_back(line);
  REQUIRE(out.size() == 2);
  return out;
}

// The message of the dmm::InvalidArgument that opening with `options` throws.
std::string invalid_argument(const dmm::BucketOptions& options) {
  try {
    dmm::Bucket::open(options);
  } catch (const dmm::InvalidArgument& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL("not an InvalidArgument: " << e.what());
  }
  FAIL("Bucket::open succeeded");
  return "";
}

}  // namespace

TEST_CASE("NATS with an NKey seed file works, a wrong seed is refused, and no seed is shown", "[security]") {
  nats_binary_check();
  const auto keys = make_keys("user"), other = make_keys("user");
  const auto seed_file = keys / "user.nk";
  const auto secrets = std::vector<std::string>{file_text(seed_file), file_text(other / "user.nk")};
  REQUIRE(secrets[0].rfind("SU", 0) == 0);
  write_file(keys / "nats.conf", "authorization { users = [ { nkey: " + file_text(keys / "user.pub") + " } ] }\n");
  PrivateNats nats({"-c", (keys / "nats.conf").string()});
  const auto url = "nats://127.0.0.1:" + std::to_string(nats.port);
  CapturedLog log;
  const auto name = unique_name("natsnkey");
  dmm::BucketOptions options{
      .name = name, .postgres = servers().postgres, .nats = url, .nats_nkey_seed_file = seed_file.string(),
      .logger = log.logger};
  converge_one(options);
  const auto before = stored_snapshot(name);
  REQUIRE_FALSE(before.empty());
  auto stats = dmm::kind_stats(servers().postgres, name);
  REQUIRE_FALSE(stats.empty());
  dmm::stream_stats(stats, url, name, {.nkey_seed_file = seed_file.string()});  // dmmctl stats' path
  CHECK(stats.front().tokens_pending.has_value());

  std::vector<std::string> errors;
  {  // refused by the server
    for (const auto& refused : {std::string(), (other / "user.nk").string()}) {
      auto o = options;
      o.nats_nkey_seed_file = refused;
      try {
        dmm::Bucket::open(o);
        FAIL("open succeeded with the seed file '" << refused << "'");
      } catch (const dmm::ConnectionError& e) {
        errors.push_back(e.what());
        CHECK_THAT(e.what(), Catch::Contains("nats_nkey_seed_file"));  // the way out
      }
    }
  }
  {  // refused before connecting
    auto o = options;
    o.nats_nkey_seed_file = (keys / "missing.nk").string();
    errors.push_back(invalid_argument(o));
    CHECK_THAT(errors.back(), Catch::Contains("nats_nkey_seed_file '" + o.nats_nkey_seed_file + "' cannot be read"));
    write_file(keys / "garbage.nk", "not a seed\n");
    o.nats_nkey_seed_file = (keys / "garbage.nk").string();
    errors.push_back(invalid_argument(o));
    CHECK_THAT(errors.back(), Catch::Contains("holds no user NKey seed"));
    auto damaged = secrets[0];
    damaged[30] = damaged[30] == 'A' ? 'B' : 'A';
    write_file(keys / "damaged.nk", damaged + "\n");
    o.nats_nkey_seed_file = (keys / "damaged.nk").string();
    errors.push_back(invalid_argument(o));
    CHECK_THAT(errors.back(), Catch::Contains("bad checksum"));
    CHECK(errors.back().find(damaged) == std::string::npos);
    o = options;
    o.nats_creds_file = (keys / "user.creds").string();
    errors.push_back(invalid_argument(o));
    CHECK_THAT(errors.back(), Catch::Contains("nats_creds_file and nats_nkey_seed_file are both set; give one"));
    o = options;
    o.nats = "nats://dmm:" + std::string(kNatsPassword) + "@127.0.0.1:" + std::to_string(nats.port);
    errors.push_back(invalid_argument(o));
    CHECK_THAT(errors.back(), Catch::Contains("dmm:****@") && Catch::Contains("drop the user info from the URL"));
  }
  const auto text = log.text();
  for (const auto& e : errors) {
    INFO(e);
    CHECK(e.find(kNatsPassword) == std::string::npos);
    for (const auto& s : secrets) CHECK(e.find(s) == std::string::npos);
  }
  for (const auto& s : secrets) CHECK(text.find(s) == std::string::npos);
  CHECK(stored_snapshot(name) == before);
  std::filesystem::remove_all(keys);
  std::filesystem::remove_all(other);
}

TEST_CASE("NATS with a .creds file (operator JWTs) works, a stranger's is refused, and no secret is shown",
          "[security]") {
  nats_binary_check();
  const auto keys = make_keys("creds");
  const auto creds = keys / "user.creds", stranger = keys / "other.creds";
  PrivateNats nats({"-c", (keys / "resolver.conf").string()});
  const auto url = "nats://127.0.0.1:" + std::to_string(nats.port);
  CapturedLog log;
  const auto name = unique_name("natscreds");
  dmm::BucketOptions options{
      .name = name, .postgres = servers().postgres, .nats = url, .nats_creds_file = creds.string(), .logger = log.logger};
  converge_one(options);
  const auto before = stored_snapshot(name);
  REQUIRE_FALSE(before.empty());
  auto stats = dmm::kind_stats(servers().postgres, name);
  REQUIRE_FALSE(stats.empty());
  dmm::stream_stats(stats, url, name, {.creds_file = creds.string()});
  CHECK(stats.front().tokens_pending.has_value());

  std::vector<std::string> errors;
  for (const auto& refused : {std::string(), stranger.string()}) {
    auto o = options;
    o.nats_creds_file = refused;
    try {
      dmm::Bucket::open(o);
      FAIL("open succeeded with the creds file '" << refused << "'");
    } catch (const dmm::ConnectionError& e) {
      errors.push_back(e.what());
      CHECK_THAT(e.what(), Catch::Contains("nats_creds_file"));
    }
  }
  auto o = options;
  o.nats_creds_file = (keys / "missing.creds").string();
  errors.push_back(invalid_argument(o));
  CHECK_THAT(errors.back(), Catch::Contains("nats_creds_file '" + o.nats_creds_file + "' cannot be read"));
  // A bare seed is not a .creds file.
  write_file(keys / "seed-only.creds", creds_secrets(creds)[1] + "\n");
  o.nats_creds_file = (keys / "seed-only.creds").string();
  errors.push_back(invalid_argument(o));
  CHECK_THAT(errors.back(), Catch::Contains("holds no user JWT"));

  auto secrets = creds_secrets(creds);
  for (const auto& s : creds_secrets(stranger)) secrets.push_back(s);
  const auto text = log.text();
  for (const auto& s : secrets) {
    CHECK(text.find(s) == std::string::npos);
    for (const auto& e : errors) CHECK(e.find(s) == std::string::npos);
  }
  CHECK(stored_snapshot(name) == before);
  std::filesystem::remove_all(keys);
}
