// Site files: parse, apply (with pruning), delete.
#include "hostd/site.hpp"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <set>
#include <thread>

namespace hostd {

namespace fs = std::filesystem;
using dmm::controllers::files::FileMatter;
using dmm::controllers::files::FileSpec;
using dmm::controllers::processes::Need;
using dmm::controllers::processes::ProcessMatter;
using dmm::controllers::processes::ProcessSpec;
using dmm::controllers::rollouts::RolloutMatter;
using dmm::controllers::rollouts::RolloutSpec;
using nlohmann::json;

namespace {

[[noreturn]] void invalid(const fs::path& file, const std::string& where, const std::string& why) {
  throw std::runtime_error("site file " + file.string() + ": " + where + ": " + why);
}

// Fields the site may set: those of the spec type, except `site` (hostd's own).
void check_fields(const fs::path& file, const std::string& where, const json& obj, const json& known) {
  if (!obj.is_object()) invalid(file, where, "must be an object");
  for (const auto& [key, value] : obj.items())
    if (!known.contains(key) || (key == "site" && where != "top level"))
      invalid(file, where, "unknown field '" + key + "'");
}

std::string absolute_from(const fs::path& base, const std::string& p) {
  if (p.empty()) return p;
  return (fs::path(p).is_absolute() ? fs::path(p) : base / p).lexically_normal().string();
}

// Stored matters of kind T (all sites), decoded.
template <class T>
std::vector<T> stored(dmm::Bucket& bucket, const std::string& postgres) {
  std::vector<T> out;
  for (const auto& m : dmm::inspect({.postgres = postgres, .bucket = bucket.name(), .kind = bucket.kind<T>(),
                                     .limit = 1'000'000}))
    if (!m.removing) out.push_back(json::parse(m.state).template get<T>());
  return out;
}

// notify a new matter, or replace only the spec of an existing one.
template <class T, class Spec>
const char* put(dmm::Bucket& bucket, const std::string& id, const Spec& spec, Spec T::*field) {
  auto current = bucket.get<T>(id);
  if (current && (*current).*field == spec) return "unchanged";
  if (current && bucket.update<T>(id, [&](T& obj) { obj.*field = spec; })) return "configured";
  T obj;
  obj.*field = spec;
  bucket.notify(obj);
  return "created";
}

// remove, retrying while dependents (being removed too) still hold it.
template <class T>
void remove_waiting(dmm::Bucket& bucket, const std::string& id, std::ostream& out) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  for (;;) {
    try {
      bucket.remove<T>(id);
      out << bucket.kind<T>() << " " << id << " removed\n";
      return;
    } catch (const dmm::DependencyError& e) {
      if (std::chrono::steady_clock::now() > deadline) throw;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));  // its dependents are being finalized
    }
  }
}

// What a site declares (or stored matters of a site hold), by kind.
struct Names {
  std::set<std::string> files, processes, rollouts;
};

// Processes and rollouts first: they may depend on the files.
void remove_all(dmm::Bucket& bucket, const Names& names, std::ostream& out) {
  for (const auto& name : names.processes) remove_waiting<ProcessMatter>(bucket, name, out);
  for (const auto& name : names.rollouts) remove_waiting<RolloutMatter>(bucket, name, out);
  for (const auto& path : names.files) remove_waiting<FileMatter>(bucket, path, out);
}

// The stored matters of site `name` that `keep` does not name.
Names stored_of_site(dmm::Bucket& bucket, const std::string& postgres, const std::string& name, const Names& keep) {
  Names gone;
  for (const auto& p : stored<ProcessMatter>(bucket, postgres))
    if (p.spec.site == name && !keep.processes.contains(p.spec.name)) gone.processes.insert(p.spec.name);
  for (const auto& r : stored<RolloutMatter>(bucket, postgres))
    if (r.spec.site == name && !keep.rollouts.contains(r.spec.name)) gone.rollouts.insert(r.spec.name);
  for (const auto& f : stored<FileMatter>(bucket, postgres))
    if (f.spec.site == name && !keep.files.contains(f.spec.path)) gone.files.insert(f.spec.path);
  return gone;
}

// A rollout entry: its config and health objects are checked field by field too.
RolloutSpec parse_rollout(const fs::path& file, const std::string& where, const json& obj, const fs::path& base) {
  check_fields(file, where, obj, json(RolloutSpec{}));
  if (obj.contains("config")) check_fields(file, where + ".config", obj["config"], json(RolloutSpec{}.config));
  if (obj.contains("health")) check_fields(file, where + ".health", obj["health"], json(RolloutSpec{}.health));
  RolloutSpec spec;
  try {
    spec = obj.get<RolloutSpec>();
  } catch (const json::exception& e) {
    invalid(file, where, e.what());
  }
  if (spec.name.empty()) invalid(file, where, "name is required");
  if (spec.version.empty()) invalid(file, where, "version is required");
  if (spec.health.url.empty() == spec.health.command.empty())
    invalid(file, where + ".health", "set either url or command");
  spec.cwd = absolute_from(base, obj.value("cwd", base.string()));
  spec.config.path = absolute_from(base, spec.config.path);
  return spec;
}

}  // namespace

Site parse_site(const fs::path& file) {
  std::ifstream in(file);
  if (!in) throw std::runtime_error("site file " + file.string() + ": cannot read it");
  json doc;
  try {
    doc = json::parse(in);
  } catch (const json::exception& e) {
    invalid(file, "JSON", e.what());
  }
  check_fields(file, "top level", doc, json{{"site", 1}, {"files", 1}, {"processes", 1}, {"rollouts", 1}});
  const fs::path base = fs::absolute(file).parent_path();
  Site site{
      .name = doc.value("site", file.stem().string()), .file = file, .files = {}, .processes = {}, .rollouts = {}};
  std::set<std::string> seen;
  for (std::size_t i = 0; i < doc.value("files", json::array()).size(); ++i) {
    const json& obj = doc["files"][i];
    const std::string where = "files[" + std::to_string(i) + "]";
    check_fields(file, where, obj, json(FileSpec{}));
    FileSpec spec;
    try {
      spec = obj.get<FileSpec>();
    } catch (const json::exception& e) {
      invalid(file, where, e.what());
    }
    if (spec.path.empty()) invalid(file, where, "path is required");
    spec.path = absolute_from(base, spec.path);
    spec.source = absolute_from(base, spec.source);
    spec.site = site.name;
    if (!seen.insert("file " + spec.path).second) invalid(file, where, "file " + spec.path + " is declared twice");
    site.files.push_back(std::move(spec));
  }
  for (std::size_t i = 0; i < doc.value("processes", json::array()).size(); ++i) {
    json obj = doc["processes"][i];
    const std::string where = "processes[" + std::to_string(i) + "]";
    check_fields(file, where, obj, json(ProcessSpec{}));
    // depends_on: "path" (a file of this host) or {"kind": ..., "identity": ...}.
    std::vector<Need> needs;
    for (const auto& dep : obj.value("depends_on", json::array())) {
      Need need = dep.is_string() ? Need{.kind = "file", .identity = dep.get<std::string>()} : dep.get<Need>();
      if (need.kind == "file") need.identity = absolute_from(base, need.identity);
      needs.push_back(need);
    }
    obj.erase("depends_on");
    ProcessSpec spec;
    try {
      spec = obj.get<ProcessSpec>();
    } catch (const json::exception& e) {
      invalid(file, where, e.what());
    }
    if (spec.name.empty()) invalid(file, where, "name is required");
    spec.cwd = absolute_from(base, obj.value("cwd", base.string()));
    spec.depends_on = std::move(needs);
    spec.site = site.name;
    if (!seen.insert("process " + spec.name).second) invalid(file, where, "process " + spec.name + " is declared twice");
    site.processes.push_back(std::move(spec));
  }
  for (std::size_t i = 0; i < doc.value("rollouts", json::array()).size(); ++i) {
    auto spec = parse_rollout(file, "rollouts[" + std::to_string(i) + "]", doc["rollouts"][i], base);
    spec.site = site.name;
    if (!seen.insert("rollout " + spec.name).second)
      invalid(file, "rollouts[" + std::to_string(i) + "]", "rollout " + spec.name + " is declared twice");
    site.rollouts.push_back(std::move(spec));
  }
  return site;
}

std::vector<Site> parse_sites(const fs::path& file_or_dir) {
  if (!fs::is_directory(file_or_dir)) return {parse_site(file_or_dir)};
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(file_or_dir))
    if (entry.path().extension() == ".json") files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  std::vector<Site> sites;
  for (const auto& f : files) sites.push_back(parse_site(f));
  return sites;
}

void apply_site(dmm::Bucket& bucket, const std::string& postgres, const Site& site, bool prune, std::ostream& out) {
  // Files first, so that processes find their dependencies declared.
  for (const auto& spec : site.files)
    out << "file " << spec.path << " " << put<FileMatter>(bucket, spec.path, spec, &FileMatter::spec) << "\n";
  for (const auto& spec : site.processes)
    out << "process " << spec.name << " " << put<ProcessMatter>(bucket, spec.name, spec, &ProcessMatter::spec)
        << "\n";
  for (const auto& spec : site.rollouts)
    out << "rollout " << spec.name << " " << put<RolloutMatter>(bucket, spec.name, spec, &RolloutMatter::spec)
        << "\n";
  if (!prune) return;
  Names declared;
  for (const auto& f : site.files) declared.files.insert(f.path);
  for (const auto& p : site.processes) declared.processes.insert(p.name);
  for (const auto& r : site.rollouts) declared.rollouts.insert(r.name);
  remove_all(bucket, stored_of_site(bucket, postgres, site.name, declared), out);
}

void delete_site(dmm::Bucket& bucket, const std::string& postgres, const std::string& name, std::ostream& out) {
  remove_all(bucket, stored_of_site(bucket, postgres, name, {}), out);
}

}  // namespace hostd
