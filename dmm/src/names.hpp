// Names and identities: validation, and how they map onto JetStream.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace dmm::detail {

inline constexpr std::size_t kMaxIdentityBytes = 1024;

// Bucket and kind names: 1-64 characters from [A-Za-z0-9_-] (they become
// stream, consumer and subject tokens). `what` is "bucket" or "kind".
void validate_name(std::string_view what, std::string_view name);

// 1-1024 bytes of valid UTF-8 without NUL; InvalidArgument naming the kind.
void validate_identity(std::string_view kind, std::string_view identity);

std::string stream_name(std::string_view bucket);                 // DMM_<bucket>
std::string bucket_subjects(std::string_view bucket);             // dmm.<bucket>.>
std::string kind_subjects(std::string_view bucket, std::string_view kind);  // dmm.<bucket>.<kind>.>
std::string token_subject(std::string_view bucket, std::string_view kind, std::int64_t row_id);
// Row id from a token subject of this bucket and kind; nullopt for anything else.
std::optional<std::int64_t> parse_token_subject(std::string_view subject, std::string_view bucket,
                                                std::string_view kind);

}  // namespace dmm::detail
