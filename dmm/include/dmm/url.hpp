// URL helpers shared by the library, its tools and its logs.
#pragma once

#include <string>
#include <string_view>

namespace dmm {

// The URL with any password replaced by "****": scheme://user:****@host,
// and password=**** in key=value connection strings. Everything dmm logs or
// throws goes through this.
std::string mask_url(std::string_view url);

}  // namespace dmm
