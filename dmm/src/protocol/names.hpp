// Names and identities: validation, and how they map onto JetStream.
#pragma once

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dmm/options.hpp"

namespace dmm::detail {

inline constexpr std::size_t kMaxIdentityBytes = 1024;

// Bucket and kind names: 1-64 characters from [A-Za-z0-9_-] (they become
// stream, consumer and subject tokens). `what` is "bucket" or "kind".
void validate_name(std::string_view what, std::string_view name);

// 1-1024 bytes of valid UTF-8 without NUL; InvalidArgument naming the kind.
void validate_identity(std::string_view kind, std::string_view identity);

// Most bytes of a fairness key (KindOptions::fairness_key).
inline constexpr std::size_t kMaxFairKeyBytes = 256;
// InvalidArgument naming the matter unless `key` is 1-256 bytes of UTF-8
// without NUL.
void validate_fair_key(std::string_view kind, std::string_view identity, std::string_view key);

// Who left a state that is checked against BucketOptions::max_state_bytes:
// a notify (InvalidArgument, nothing is stored) or a materializer
// (TerminalError: retrying would leave the same state).
enum class StateSource { notify, materialize };

// Throws, naming the matter, if `state` is over `limit` bytes or cannot be
// stored as JSON (a string that is not UTF-8: InvalidArgument for a notify,
// nlohmann's own error for a materializer).
void check_state_size(const nlohmann::json& state, std::size_t limit, StateSource source, std::string_view kind,
                      std::string_view identity);

std::string stream_name(std::string_view bucket);                 // DMM_<bucket>
std::string bucket_subjects(std::string_view bucket);             // dmm.<bucket>.>

// Each priority class of a kind has its own subjects and its own durable
// consumer, so that a worker can take a higher class first
// (docs/DESIGN.md, "Priority"). Their name is the kind's with the class's
// suffix (vocabulary.hpp): "<kind>" for normal, "<kind>~high", "<kind>~low".
// '~' is outside the characters of a kind name, so no two kinds' names
// collide, and the normal class keeps the names of a bucket made before
// priorities.
std::string class_name(std::string_view kind, Priority priority);
// The kind a class name (a consumer, or a subject's third token) belongs to.
std::string_view kind_of_class_name(std::string_view class_name);
// dmm.<bucket>.<class name>.>
std::string kind_subjects(std::string_view bucket, std::string_view kind, Priority priority = Priority::normal);

// Tokens. One matter: subject dmm.<bucket>.<class name>.<row id>, no
// payload; many notifies of one matter coalesce into it (MaxMsgsPerSubject =
// 1). Several matters: subject dmm.<bucket>.<class name>.<first>.<last>,
// payload the row ids in ascending order, comma-separated, `first` to `last`
// (one message instead of one per matter is what makes bulk work cheap on
// the NATS side).
std::string token_subject(std::string_view bucket, std::string_view kind, std::int64_t row_id,
                          Priority priority = Priority::normal);

// Most row ids dmm puts into one token.
inline constexpr std::size_t kMaxIdsPerToken = 64;
// Most row ids a token may name to be accepted (tokens of a later version
// may be larger than this one's).
inline constexpr std::size_t kMaxIdsPerTokenParsed = 10'000;

struct TokenMessage {
  std::string subject;
  std::string payload;
};
// The tokens for `ids` (sorted, duplicates dropped): a one-matter token for a
// single id, else as few as possible of at most kMaxIdsPerToken ids each, of
// about equal size.
std::vector<TokenMessage> token_messages(std::string_view bucket, std::string_view kind,
                                         std::vector<std::int64_t> ids, Priority priority = Priority::normal);
// The row ids a message on the class's subjects names; nullopt if it is not a
// well-formed token of this bucket, kind and class.
std::optional<std::vector<std::int64_t>> parse_token(std::string_view subject, std::string_view payload,
                                                     std::string_view bucket, std::string_view kind,
                                                     Priority priority = Priority::normal);

}  // namespace dmm::detail
