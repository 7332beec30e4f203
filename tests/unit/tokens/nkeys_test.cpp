// The public key of a user NKey seed, as nats-io/nkeys derives it (the pair
// below was made by tests/support/nkeys.py, with Python's cryptography).
#include "tokens/nkeys.hpp"

#include <catch2/catch.hpp>

#include "dmm/errors.hpp"

using dmm::detail::find_user_seed;
using dmm::detail::user_public_key;

namespace {
constexpr const char* kSeed = "SUADX2P2DBHIGRPDM6DKKT63URTX7OZ6B3GHT5FQSGODWZP2JF2CMOCF7Q";
constexpr const char* kPublic = "UDWFC557F3YO4IXNIAPZCFXQRCY2M57EKK4YUCL6TS4PL2Z6F6VQ6AFZ";
constexpr const char* kAccountSeed = "SAAAG4GRUB45TYJNETZSLVTSHW42RMZWMOLK3TOREG4GLJQWVRHFDXRBJQ";
}  // namespace

TEST_CASE("a user seed gives the public key nkeys gives", "[nkeys]") { CHECK(user_public_key(kSeed) == kPublic); }

TEST_CASE("a damaged or non-user seed is refused without showing it", "[nkeys]") {
  std::string damaged = kSeed;
  damaged[20] = damaged[20] == 'A' ? 'B' : 'A';
  for (const std::string& bad : {damaged, std::string(kAccountSeed), std::string(kSeed).substr(0, 40),
                                std::string("su") + (kSeed + 2), std::string(kPublic)}) {
    try {
      user_public_key(bad);
      FAIL("accepted " << bad);
    } catch (const dmm::InvalidArgument& e) {
      const std::string what = e.what();
      CHECK(what.find("not a NATS user NKey seed") != std::string::npos);
      CHECK(what.find(bad) == std::string::npos);
    }
  }
}

TEST_CASE("the seed is found in a bare seed file, nk's output and a .creds file", "[nkeys]") {
  const std::string seed = kSeed;
  CHECK(find_user_seed(seed + "\n") == seed);
  CHECK(find_user_seed("-----BEGIN USER NKEY SEED-----\n" + seed + "\n------END USER NKEY SEED------\n") == seed);
  CHECK(find_user_seed("-----BEGIN NATS USER JWT-----\neyJ0eXAi.SUxx.abc\n------END NATS USER JWT------\n\n"
                       "NKEYs are sensitive\n-----BEGIN USER NKEY SEED-----\n" +
                       seed + "\n------END USER NKEY SEED------\n") == seed);
  CHECK(find_user_seed(kAccountSeed).empty());
  CHECK(find_user_seed("no key here").empty());
}
