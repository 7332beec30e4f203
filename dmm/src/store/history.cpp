// The attempt history (dmm.attempt, an UNLOGGED ring of history_limit slots
// per matter, written by the write-back): pruning by age.
#include "store/history.hpp"

namespace dmm::detail {
namespace {

// Prunes history older than the retention, a batch at a time. There is no
// index on age (it would cost every write-back), so finding old rows scans
// dmm.attempt: ~0.3 s per 2 million rows with nothing to prune, measured;
// hence a bucket is pruned by one sweeper per process every few minutes
// (BucketCore::take_prune_turn). The rows found are deleted by ctid, not
// joined back to the table.
constexpr const char* kPruneHistory = R"sql(
WITH old AS (
  SELECT ctid FROM dmm.attempt
   WHERE bucket = $1 AND started_at < now() - $2 * interval '1 millisecond'
   LIMIT $3 FOR UPDATE SKIP LOCKED
)
DELETE FROM dmm.attempt WHERE ctid = ANY (ARRAY(SELECT ctid FROM old))
)sql";

}  // namespace

void prepare_history_statements(pqxx::connection& conn) { conn.prepare("dmm_prune_history", kPruneHistory); }

std::int64_t prune_history(pqxx::connection& conn, const std::string& bucket, std::chrono::milliseconds retention,
                           int limit) {
  pqxx::nontransaction tx(conn);
  return static_cast<std::int64_t>(
      tx.exec_prepared("dmm_prune_history", bucket, retention.count(), limit).affected_rows());
}

}  // namespace dmm::detail
