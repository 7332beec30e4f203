#include "store/registry.hpp"

namespace dmm::detail {

void record_kind(pqxx::connection& conn, const KindRecord& r) {
  pqxx::nontransaction tx(conn);
  tx.exec_params(R"sql(
INSERT INTO dmm.kind AS k (bucket, kind, max_state_bytes, has_finalize, has_dependencies, fair, registered_by)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (bucket, kind) DO UPDATE SET
  max_state_bytes = EXCLUDED.max_state_bytes, has_finalize = EXCLUDED.has_finalize,
  has_dependencies = EXCLUDED.has_dependencies, fair = EXCLUDED.fair,
  registered_by = EXCLUDED.registered_by, registered_at = now())sql",
                 r.bucket, r.kind, r.max_state_bytes, r.has_finalize, r.has_dependencies, r.fair, r.registered_by);
}

}  // namespace dmm::detail
