// Builds against the installed dmm package: a materializer type and one call
// into the library.
#include <dmm/dmm.hpp>
#include <iostream>
#include <string>

namespace {

struct Lamp {
  std::string room;
  bool on = false;
  std::string identity() const { return room; }
  dmm::Result materialize(dmm::Context& ctx) {
    ctx.log().info("lamp {} on={}", room, on);
    return dmm::Result::done();
  }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Lamp, room, on)

static_assert(dmm::Materializer<Lamp>);

}  // namespace

int main() {
  const std::string masked = dmm::mask_url("postgresql://app:secret@db:5432/app");
  std::cout << masked << "\n";
  if (masked != "postgresql://app:****@db:5432/app") {
    std::cerr << "unexpected mask_url result: " << masked << "\n";
    return 1;
  }
  return 0;
}
