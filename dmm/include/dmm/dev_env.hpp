// Settings of dmm's command-line programs (dmmctl, the example, the
// controllers, dmm_bench), the same way for each: a flag if given, else an
// environment variable DMM_*, else the `export KEY=value` line of the nearest
// .dmm/env, which `scripts/dev-env up` writes. So on a developer's machine
// every program finds the local servers with no flags at all.
#pragma once

#include <string>

namespace dmm {

// `flag` if not empty; else $`env` if set and not empty; else the value of the
// last `export <env>=value` line of the .dmm/env in the current directory or
// the nearest parent that has one for `env`; else "". The value is taken as
// written (no shell unquoting). Never throws: a missing or unreadable
// directory or file counts as not having the setting.
std::string dev_env_setting(const std::string& flag, const char* env);

// dev_env_setting(flag, env), required. When it is empty, throws
// dmm::InvalidArgument "no <what>: pass --<option>, set <env>, or start local
// servers with scripts/dev-env up". Logs nothing; mask_url (dmm/url.hpp) a
// URL before logging it.
std::string required_dev_env_setting(const std::string& flag, const char* env, const char* option,
                                     const char* what);

}  // namespace dmm
