// Content hashes for drift detection: FNV-1a 64 as 16 hex digits. It detects
// accidental change (an edit, a truncation), not tampering; no crypto library
// is needed for that.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace dmm::controllers {

std::string content_hash(std::string_view bytes);

// The hash of a file's content, or nullopt if it cannot be read.
std::optional<std::string> file_hash(const std::filesystem::path& path);

}  // namespace dmm::controllers
