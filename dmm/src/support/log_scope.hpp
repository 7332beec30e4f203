// The matter a thread is working on, for log lines (dmm/log.hpp): set while a
// materialization runs and around engine lines about one matter.
#pragma once

#include <string>

namespace dmm::detail {

struct MatterLogFields {
  const std::string* bucket = nullptr;
  const std::string* kind = nullptr;
  const std::string* identity = nullptr;
};

// The calling thread's current matter (all null when none).
const MatterLogFields& current_matter();

// Sets the calling thread's matter until destroyed (nests). The strings must
// outlive the scope: only pointers are kept.
class MatterLogScope {
 public:
  MatterLogScope(const std::string& bucket, const std::string& kind, const std::string& identity);
  ~MatterLogScope();
  MatterLogScope(const MatterLogScope&) = delete;
  MatterLogScope& operator=(const MatterLogScope&) = delete;

 private:
  MatterLogFields saved_;
};

}  // namespace dmm::detail
