#include "operate/steps_view.hpp"

#include <nlohmann/json.hpp>

namespace dmm::detail {

std::vector<ShownSteps> steps_in(const std::string& state_text) {
  nlohmann::json state;
  try {
    state = nlohmann::json::parse(state_text);
  } catch (const nlohmann::json::exception&) {
    return {};
  }
  if (!state.is_object()) return {};
  std::vector<ShownSteps> out;
  for (const auto& [field, value] : state.items()) {
    if (!value.is_object() || value.value("format", "") != StepProgress{}.format) continue;
    ShownSteps shown{.field = field, .progress = std::nullopt};
    try {
      shown.progress = value.get<StepProgress>();
    } catch (const nlohmann::json::exception&) {
    }
    out.push_back(std::move(shown));
  }
  return out;
}

const StepRecord* current_step(const StepProgress& progress) {
  for (const auto& r : progress.steps)
    if (r.status != "done") return &r;
  return nullptr;
}

}  // namespace dmm::detail
