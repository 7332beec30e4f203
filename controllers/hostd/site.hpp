// Site files: hostd's desired state. A site is one JSON file:
//
//   {
//     "site": "web",                      // optional; default: the file name without .json
//     "files": [ {"path": "www/index.html", "content": "<h1>hi</h1>", "mode": "0644", "owner": ""},
//                {"path": "www/logo.svg", "source": "assets/logo.svg"} ],
//     "processes": [ {"name": "web", "command": "python3", "args": ["-m", "http.server", "8080"],
//                     "cwd": "www", "env": {"PYTHONUNBUFFERED": "1"}, "restart": "always",
//                     "depends_on": ["www/index.html"], "stop_grace_ms": 5000} ],
//     "rollouts": [ {"name": "api", "version": "v2", "command": "python3",
//                    "args": ["-m", "http.server", "8082"], "cwd": "api-v2",
//                    "config": {"path": "api.conf", "content": "port=8082\n"},
//                    "health": {"url": "http://127.0.0.1:8082/", "interval_ms": 500, "attempts": 20}} ]
//   }
//
// Relative paths (path, source, cwd, file dependencies, config.path) are
// relative to the site file's directory. An unknown field is an error naming it.
#pragma once

#include <filesystem>
#include <ostream>
#include <string>
#include <vector>

#include <dmm/controllers/files.hpp>
#include <dmm/controllers/processes.hpp>
#include <dmm/controllers/rollouts.hpp>

namespace hostd {

struct Site {
  std::string name;
  std::filesystem::path file;
  std::vector<dmm::controllers::files::FileSpec> files;
  std::vector<dmm::controllers::processes::ProcessSpec> processes;
  std::vector<dmm::controllers::rollouts::RolloutSpec> rollouts;
};

// Parses one site file; std::runtime_error naming the file and field if it is invalid.
Site parse_site(const std::filesystem::path& file);
// One site file, or every *.json in a directory (sorted by name).
std::vector<Site> parse_sites(const std::filesystem::path& file_or_dir);

// Notifies the site's files, processes and rollouts (keeping their observed
// state: only the spec is replaced, so a rollout of a new version starts from
// the one serving). With `prune`, matters of the same site that the file no
// longer declares are removed (processes and rollouts first, then files).
// Prints one line per matter to `out`.
void apply_site(dmm::Bucket& bucket, const std::string& postgres, const Site& site, bool prune, std::ostream& out);

// Removes every matter of site `name`: processes and rollouts (stopped), then
// files (deleted).
void delete_site(dmm::Bucket& bucket, const std::string& postgres, const std::string& name, std::ostream& out);

}  // namespace hostd
