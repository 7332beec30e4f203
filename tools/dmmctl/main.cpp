// dmmctl: look at and operate any dmm bucket from a terminal. It needs no
// knowledge of the user's types: it reads PostgreSQL (and JetStream for
// `stats`) through dmm/inspect.hpp, the same code as the example's `debug`
// and the workers' web view.
//
//   dmmctl list [--kind K] [--phase P] [--limit N]
//   dmmctl describe KIND IDENTITY [--history N]
//   dmmctl why KIND IDENTITY
//   dmmctl retry KIND IDENTITY | dmmctl retry [--kind K] --phase failed [--yes]
//   dmmctl remove KIND IDENTITY | dmmctl remove [--kind K] --phase P [--yes] [--skip-finalize]
//   dmmctl watch [--kind K] [--interval-ms N] [--count N] [--timeout S]
//   dmmctl stats
//   dmmctl migrate | dmmctl migrate status
//
// Settings: --postgres/--nats/--bucket, else DMM_POSTGRES_URL/DMM_NATS_URL/
// DMM_BUCKET, else the .dmm/env written by `scripts/dev-env up`; without a
// bucket, the only bucket in the database (list and stats: every bucket, with
// a BUCKET column, also with -A). --output table|json everywhere.
#include <CLI/CLI.hpp>
#include <chrono>
#include <dmm/dev_env.hpp>
#include <dmm/dmm.hpp>
#include <fmt/chrono.h>
#include <fmt/format.h>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "table.hpp"

namespace {

using dmm::human_duration;
using dmmctl::Table;
using nlohmann::json;

struct Settings {
  std::string postgres, nats, bucket, output = "table";
  dmm::NatsTls nats_tls;  // as BucketOptions::nats_ca_file etc. and nats_creds_file
  bool json() const { return output == "json"; }
};

void need_postgres(Settings& s) {
  s.postgres = dmm::required_dev_env_setting(s.postgres, "DMM_POSTGRES_URL", "postgres", "PostgreSQL URL");
}

// The buckets list and stats show: all of them with --all-buckets, or when
// none is configured and the database holds several (as kubectl -A); else
// the configured or only one.
std::vector<std::string> buckets_to_show(Settings& s, bool all) {
  need_postgres(s);
  if (!all) s.bucket = dmm::dev_env_setting(s.bucket, "DMM_BUCKET");
  if (!all && !s.bucket.empty()) return {s.bucket};
  auto buckets = dmm::list_buckets(s.postgres);
  if (buckets.empty())
    throw dmm::InvalidArgument("no bucket has matters in this database; pass --bucket");
  return buckets;
}

// The one bucket the other commands act on.
void need_bucket(Settings& s) {
  auto buckets = buckets_to_show(s, false);
  if (buckets.size() == 1) {
    s.bucket = buckets.front();
    return;
  }
  std::string names;
  for (const auto& b : buckets) names += (names.empty() ? "" : ", ") + b;
  throw dmm::InvalidArgument("several buckets (" + names + "): pass --bucket or set DMM_BUCKET");
}

std::string due_text(const dmm::MatterStatus& m) {
  if (!m.due_in_ms) return "-";
  if (*m.due_in_ms <= 0) return "now (" + human_duration(*m.due_in_ms) + " overdue)";
  return "in " + human_duration(*m.due_in_ms);
}

// With several buckets, a BUCKET column comes first (JSON always names the bucket).
int cmd_list(Settings& s, const std::vector<std::string>& buckets, dmm::InspectQuery q) {
  const bool several = buckets.size() > 1;
  std::vector<std::pair<std::string, dmm::MatterStatus>> matters;
  for (const auto& b : buckets) {
    q.bucket = b;
    for (auto& m : dmm::inspect(q)) matters.emplace_back(b, std::move(m));
  }
  if (s.json()) {
    json out = json::array();
    for (const auto& [b, m] : matters) {
      out.push_back(m);
      out.back()["bucket"] = b;
    }
    std::cout << out.dump(2) << '\n';
    return 0;
  }
  std::vector<std::string> header{"KIND", "IDENTITY", "PHASE", "ATTEMPTS", "AGE", "NEXT DUE"};
  if (several) header.insert(header.begin(), "BUCKET");
  Table t(header);
  for (const auto& [b, m] : matters) {
    std::vector<std::string> row{m.kind, m.identity, m.phase, std::to_string(m.attempts), human_duration(m.age_ms),
                                 due_text(m)};
    if (several) row.insert(row.begin(), b);
    t.add(row);
  }
  t.print(std::cout);
  if (matters.empty()) std::cout << "(no matters)\n";
  return 0;
}

std::optional<dmm::MatterDetail> find(Settings& s, const std::string& kind, const std::string& identity, int history) {
  auto detail = dmm::describe(s.postgres, s.bucket, kind, identity, history);
  if (!detail) std::cerr << "no matter of kind '" << kind << "' with identity '" << identity << "' in bucket '"
                         << s.bucket << "'\n";
  return detail;
}

int cmd_describe(Settings& s, const std::string& kind, const std::string& identity, int history) {
  auto detail = find(s, kind, identity, history);
  if (!detail) return 1;
  if (s.json()) std::cout << json(*detail).dump(2) << '\n';
  else std::cout << dmm::format_detail(*detail);
  return 0;
}

int cmd_why(Settings& s, const std::string& kind, const std::string& identity) {
  auto detail = find(s, kind, identity, 1);
  if (!detail) return 1;
  if (s.json())
    std::cout << json{{"kind", kind}, {"identity", identity}, {"phase", detail->status.phase}, {"why", detail->why}}.dump(2)
              << '\n';
  else std::cout << detail->why << '\n';
  return 0;
}

// retry/remove: one identity, or a selection by kind/phase confirmed with --yes.
struct Selection {
  std::string kind, identity, phase;
  bool yes = false;
  bool skip_finalize = false;
};

int cmd_change(Settings& s, const Selection& sel, bool retry) {
  const char* verb = retry ? "retry" : "remove";
  dmm::InspectQuery q{.postgres = s.postgres, .bucket = s.bucket};
  if (!sel.kind.empty()) q.kind = sel.kind;
  if (!sel.identity.empty()) q.identity = sel.identity;
  if (!sel.phase.empty()) q.phase = sel.phase;
  const bool bulk = sel.identity.empty();
  if (bulk && sel.phase.empty())
    throw dmm::InvalidArgument(fmt::format("{}: give KIND IDENTITY, or select with --phase (and --kind)", verb));
  if (!bulk && sel.kind.empty()) throw dmm::InvalidArgument(fmt::format("{}: IDENTITY needs a KIND", verb));
  if (bulk && !sel.yes) {
    const auto n = dmm::count_matters(q);
    if (s.json()) std::cout << json{{"action", verb}, {"matched", n}, {"done", false}}.dump() << '\n';
    else
      std::cout << fmt::format("{} matter(s) match{}{}; add --yes to {} them\n", n,
                               sel.kind.empty() ? "" : " kind " + sel.kind, " phase " + sel.phase, verb);
    return 2;
  }
  const auto n = retry ? dmm::retry_matters(q) : dmm::remove_matters(q, sel.skip_finalize);
  if (s.json()) {
    std::cout << json{{"action", verb}, {"matched", n}, {"done", true}}.dump() << '\n';
  } else if (retry) {
    std::cout << fmt::format("retried {} matter(s): due now; the bucket's workers take them\n", n);
  } else if (sel.skip_finalize) {
    std::cout << fmt::format("removed {} matter(s) (deleted without finalize)\n", n);
  } else {
    std::cout << fmt::format("removed {} matter(s): marked for removal; a worker of the kind finalizes and deletes "
                             "them\n",
                             n);
  }
  if (!bulk && n == 0) {
    std::cerr << fmt::format("nothing to {}: no matter of kind '{}' with identity '{}'{}\n", verb, sel.kind,
                             sel.identity, retry ? " in phase failed or retrying" : "");
    return 1;
  }
  return 0;
}

std::string now_iso() {
  const auto now = std::chrono::system_clock::now();
  const auto t = std::chrono::system_clock::to_time_t(now);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  return fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:03}Z", fmt::gmtime(t), ms);
}

int cmd_watch(Settings& s, const std::optional<std::string>& kind, int interval_ms, int count, int timeout_s) {
  dmm::InspectQuery q{.postgres = s.postgres, .bucket = s.bucket, .kind = kind, .limit = 100000};
  std::map<std::pair<std::string, std::string>, std::string> phases;
  for (const auto& m : dmm::inspect(q)) phases[{m.kind, m.identity}] = m.phase;
  if (!s.json()) std::cout << fmt::format("watching {} matter(s) of bucket '{}' (Ctrl-C to stop)", phases.size(), s.bucket) << std::endl;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  int seen = 0;
  while (timeout_s <= 0 || std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(interval_ms));
    std::map<std::pair<std::string, std::string>, std::string> next;
    auto report = [&](const std::string& k, const std::string& id, const std::string& from, const std::string& to,
                      const std::string& why) {
      if (s.json())
        std::cout << json{{"time", now_iso()}, {"kind", k}, {"identity", id}, {"from", from}, {"to", to}, {"why", why}}
                         .dump()
                  << std::endl;
      else std::cout << fmt::format("{}  {}  {}  {} -> {}  {}", now_iso(), k, id, from, to, why) << std::endl;
      ++seen;
    };
    for (const auto& m : dmm::inspect(q)) {
      next[{m.kind, m.identity}] = m.phase;
      auto it = phases.find({m.kind, m.identity});
      const std::string before = it == phases.end() ? "(new)" : it->second;
      if (before != m.phase) report(m.kind, m.identity, before, m.phase, dmm::explain(m));
    }
    for (const auto& [key, phase] : phases)
      if (!next.count(key)) report(key.first, key.second, phase, "(gone)", "removed");
    phases = std::move(next);
    if (count > 0 && seen >= count) return 0;
  }
  return count > 0 ? 1 : 0;  // --count not reached before --timeout
}

int cmd_stats(Settings& s, const std::vector<std::string>& buckets) {
  const bool several = buckets.size() > 1;
  s.nats = dmm::dev_env_setting(s.nats, "DMM_NATS_URL");
  s.nats_tls.ca_file = dmm::dev_env_setting(s.nats_tls.ca_file, "DMM_NATS_CA_FILE");
  s.nats_tls.cert_file = dmm::dev_env_setting(s.nats_tls.cert_file, "DMM_NATS_CERT_FILE");
  s.nats_tls.key_file = dmm::dev_env_setting(s.nats_tls.key_file, "DMM_NATS_KEY_FILE");
  s.nats_tls.creds_file = dmm::dev_env_setting(s.nats_tls.creds_file, "DMM_NATS_CREDS_FILE");
  s.nats_tls.nkey_seed_file = dmm::dev_env_setting(s.nats_tls.nkey_seed_file, "DMM_NATS_NKEY_SEED_FILE");
  std::string nats_note;
  if (s.nats.empty()) nats_note = "(no NATS URL: token columns left out; pass --nats or set DMM_NATS_URL)";
  std::vector<dmm::KindStats> stats;
  std::vector<std::string> bucket_of;  // stats[i] is of bucket_of[i]
  for (const auto& b : buckets) {
    auto one = dmm::kind_stats(s.postgres, b);
    if (!s.nats.empty()) dmm::stream_stats(one, s.nats, b, s.nats_tls);
    for (auto& k : one) {
      stats.push_back(std::move(k));
      bucket_of.push_back(b);
    }
  }
  auto opt = [](const std::optional<std::int64_t>& v) { return v ? std::to_string(*v) : std::string("-"); };
  if (s.json()) {
    json out = json::array();
    for (const auto& k : stats) {
      auto jopt = [](const std::optional<std::int64_t>& v) { return v ? json(*v) : json(); };
      out.push_back({{"bucket", bucket_of[static_cast<std::size_t>(&k - stats.data())]},
                     {"kind", k.kind},
                     {"phases", k.phases},
                     {"total", k.total},
                     {"due_now", k.due_now},
                     {"due_by_priority", k.due_by_priority},
                     {"in_flight", k.in_flight},
                     {"slots", k.slots},
                     {"slots_in_use", k.slots_in_use},
                     {"rate_limit", k.rate.count == 0 ? json() : json{{"count", k.rate.count}, {"per_ms", k.rate.per_ms},
                                                                       {"burst", k.rate.burst},
                                                                       {"available", k.rate.available}}},
                     {"oldest_due", k.oldest_due.empty() ? json() : json(k.oldest_due)},
                     {"oldest_due_age_ms", k.oldest_due_age_ms},
                     {"tokens_pending", jopt(k.tokens_pending)},
                     {"consumer_lag", jopt(k.consumer_lag)},
                     {"ack_pending", jopt(k.ack_pending)}});
    }
    std::cout << out.dump(2) << '\n';
    return 0;
  }
  std::vector<std::string> header{"KIND",    "PENDING", "RECONCILING", "RETRYING",  "READY",      "DELETING", "FAILED",
                                  "GAVE UP", "TOTAL",   "DUE NOW",     "DUE H/N/L", "IN FLIGHT",  "SLOTS", "RATE", "OLDEST DUE",
                                  "TOKENS",  "LAG"};
  if (several) header.insert(header.begin(), "BUCKET");
  Table t(header);
  for (std::size_t i = 0; i < stats.size(); ++i) {
    const auto& k = stats[i];
    auto phase = [&](const char* p) {
      auto it = k.phases.find(p);
      return std::to_string(it == k.phases.end() ? 0 : it->second);
    };
    std::vector<std::string> row{k.kind,
                                 phase("pending"),
                                 phase("reconciling"),
                                 phase("retrying"),
                                 phase("ready"),
                                 phase("deleting"),
                                 phase("failed"),
                                 std::to_string(k.gave_up),
                                 std::to_string(k.total),
                                 std::to_string(k.due_now),
                                 due_by_priority_text(k),
                                 std::to_string(k.in_flight),
                                 slots_text(k),
                                 rate_text(k.rate),
                                 k.oldest_due.empty() ? "-" : human_duration(k.oldest_due_age_ms) + " ago",
                                 opt(k.tokens_pending),
                                 opt(k.consumer_lag)};
    if (several) row.insert(row.begin(), bucket_of[i]);
    t.add(row);
  }
  t.print(std::cout);
  if (stats.empty()) std::cout << "(no matters in bucket '" << buckets.front() << "')\n";
  if (!nats_note.empty()) std::cout << nats_note << '\n';
  return 0;
}

int cmd_migrate(Settings& s, bool status_only) {
  need_postgres(s);
  int applied = status_only ? 0 : dmm::migrate(s.postgres);
  auto status = dmm::migration_status(s.postgres);
  if (s.json()) {
    json out = json::array();
    for (const auto& m : status)
      out.push_back({{"version", m.version},
                     {"name", m.name},
                     {"checksum", m.checksum},
                     {"applied", m.applied},
                     {"applied_at", m.applied ? json(m.applied_at) : json()}});
    std::cout << (status_only ? out : json{{"applied_now", applied}, {"migrations", out}}).dump(2) << '\n';
    return 0;
  }
  if (!status_only) std::cout << fmt::format("applied {} migration(s)\n", applied);
  Table t({"VERSION", "NAME", "CHECKSUM", "APPLIED AT"});
  for (const auto& m : status)
    t.add({fmt::format("{:04}", m.version), m.name, m.checksum, m.applied ? m.applied_at : "(not applied)"});
  t.print(std::cout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"dmmctl: see why a dmm matter is not ready, and operate buckets (reads PostgreSQL and JetStream)"};
  app.require_subcommand(1);
  app.fallthrough();  // global options may follow the command
  Settings s;
  app.add_option("--postgres", s.postgres, "PostgreSQL URL (default: $DMM_POSTGRES_URL or .dmm/env)");
  app.add_option("--nats", s.nats, "NATS URL, for stats (default: $DMM_NATS_URL or .dmm/env)");
  app.add_option("--nats-ca-file", s.nats_tls.ca_file, "CA of the NATS servers, for TLS (default: $DMM_NATS_CA_FILE)");
  app.add_option("--nats-cert-file", s.nats_tls.cert_file,
                 "client certificate for NATS mutual TLS (default: $DMM_NATS_CERT_FILE)");
  app.add_option("--nats-key-file", s.nats_tls.key_file, "client key for NATS mutual TLS (default: $DMM_NATS_KEY_FILE)");
  app.add_option("--nats-creds-file", s.nats_tls.creds_file,
                 "NATS .creds file (user JWT + NKey seed) (default: $DMM_NATS_CREDS_FILE)");
  app.add_option("--nats-nkey-seed-file", s.nats_tls.nkey_seed_file,
                 "file with a NATS user NKey seed (SU...) (default: $DMM_NATS_NKEY_SEED_FILE)");
  app.add_option("--bucket", s.bucket, "bucket (default: $DMM_BUCKET, .dmm/env, or the only bucket)");
  app.add_option("-o,--output", s.output, "output format")->check(CLI::IsMember({"table", "json"}))->capture_default_str();

  std::string kind, identity, phase;
  int limit = 100, history = 10;
  auto* list = app.add_subcommand("list", "list matters: kind, identity, phase, attempts, age, next due");
  list->add_option("--kind", kind, "only this kind");
  list->add_option("--phase", phase, "only this phase (pending, reconciling, retrying, ready, deleting, failed)");
  list->add_option("--limit", limit, "at most this many")->capture_default_str();

  auto* describe = app.add_subcommand("describe", "one matter: state, generations, phase, lease, next due, history");
  describe->add_option("kind", kind, "kind")->required();
  describe->add_option("identity", identity, "identity")->required();
  describe->add_option("--history", history, "attempts to show")->capture_default_str();

  auto* why = app.add_subcommand("why", "one plain sentence on why a matter is (not) ready");
  why->add_option("kind", kind, "kind")->required();
  why->add_option("identity", identity, "identity")->required();

  Selection sel;
  auto add_selection = [&](CLI::App* cmd) {
    cmd->add_option("kind", sel.kind, "kind (with IDENTITY: one matter)");
    cmd->add_option("identity", sel.identity, "identity");
    cmd->add_option("--kind", sel.kind, "select by kind");
    cmd->add_option("--phase", sel.phase, "select by phase (bulk; needs --yes)");
    cmd->add_flag("--yes", sel.yes, "do it for a bulk selection (without: only count)");
  };
  auto* retry = app.add_subcommand("retry", "run failed (or backing-off) matters again now, attempts reset");
  add_selection(retry);
  auto* remove = app.add_subcommand("remove", "remove matters (a worker finalizes and deletes them)");
  add_selection(remove);
  remove->add_flag("--skip-finalize", sel.skip_finalize, "delete the rows now, without finalize");

  int interval_ms = 1000, count = 0, timeout_s = 0;
  auto* watch = app.add_subcommand("watch", "print phase changes as they happen");
  watch->add_option("--kind", kind, "only this kind");
  watch->add_option("--interval-ms", interval_ms, "poll period")->capture_default_str();
  watch->add_option("--count", count, "exit after this many changes (exit 1 if --timeout comes first)");
  watch->add_option("--timeout", timeout_s, "exit after this many seconds (0: never)")->capture_default_str();

  app.add_subcommand("stats", "per kind: matters by phase, due now, in flight, oldest due, tokens pending, lag");

  auto* migrate = app.add_subcommand("migrate", "apply the embedded migrations, then list them");
  auto* migrate_status = migrate->add_subcommand("status", "list the migrations with checksums and when applied");

  bool all_buckets = false;
  for (auto* sub : {list, app.get_subcommand("stats")})
    sub->add_flag("-A,--all-buckets", all_buckets, "every bucket in the database, with a BUCKET column");

  CLI11_PARSE(app, argc, argv);
  auto opt = [](const std::string& v) { return v.empty() ? std::nullopt : std::optional<std::string>(v); };
  try {
    if (migrate->parsed()) return cmd_migrate(s, migrate_status->parsed());
    if (list->parsed())
      return cmd_list(s, buckets_to_show(s, all_buckets),
                      {.postgres = s.postgres, .kind = opt(kind), .phase = opt(phase), .limit = limit});
    if (app.get_subcommand("stats")->parsed()) return cmd_stats(s, buckets_to_show(s, all_buckets));
    need_bucket(s);
    if (describe->parsed()) return cmd_describe(s, kind, identity, history);
    if (why->parsed()) return cmd_why(s, kind, identity);
    if (retry->parsed()) return cmd_change(s, sel, true);
    if (remove->parsed()) return cmd_change(s, sel, false);
    return cmd_watch(s, opt(kind), interval_ms, count, timeout_s);
  } catch (const std::exception& e) {
    std::cerr << "dmmctl: " << e.what() << '\n';
    return 1;
  }
}
