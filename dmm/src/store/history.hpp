// The attempt history (dmm.attempt): what each attempt of a matter did, for
// `dmmctl why`. The write-back records it; this prunes it by age.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <pqxx/pqxx>
#include <string>
#include <string_view>
#include <vector>

namespace dmm::detail {

void prepare_history_statements(pqxx::connection& conn);

// Deletes up to `limit` history rows of the bucket older than `retention`;
// returns how many.
std::int64_t prune_history(pqxx::connection& conn, const std::string& bucket, std::chrono::milliseconds retention,
                           int limit);

}  // namespace dmm::detail
