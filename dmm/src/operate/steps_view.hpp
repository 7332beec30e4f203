// The dmm::Steps progress fields of a matter's state, as dmmctl describe,
// `why` and the web view show them (docs/DESIGN.md, "Steps").
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "dmm/steps.hpp"

namespace dmm::detail {

struct ShownSteps {
  std::string field;                     // the state's top-level field holding it
  std::optional<StepProgress> progress;  // nullopt: marked "dmm.steps/1" but does not decode
};

// Every top-level field of the state marked "format": "dmm.steps/1", by
// field name; empty if the state has none or is not a JSON object.
std::vector<ShownSteps> steps_in(const std::string& state_text);

// The step an action stands at: the first not done (running, retrying,
// failed, pending), or nullptr when all are done.
const StepRecord* current_step(const StepProgress& progress);

}  // namespace dmm::detail
