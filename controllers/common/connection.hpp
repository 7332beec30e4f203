// Where the servers are, the same way for every controller binary (and the
// example): a flag if given, else an environment variable, else the .dmm/env
// that `scripts/dev-env up` wrote in this or a parent directory.
#pragma once

#include <string>

namespace controllers {

// `flag` if not empty, else $`env`, else `export env=...` from the nearest
// .dmm/env. dmm::InvalidArgument saying how to provide it if all are empty.
// `what` names the flag: "postgres" for --postgres.
std::string resolve_url(const std::string& flag, const char* env, const char* what);

}  // namespace controllers
