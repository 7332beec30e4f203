// NATS NKeys, as nats-io/nkeys encodes them: what dmm needs to log in with a
// user's NKey seed file (nats.c wants the public key next to the seed).
#pragma once

#include <string>
#include <string_view>

namespace dmm::detail {

// The public key ("U...") of a user NKey seed ("SU..."): the Ed25519 key of
// the seed, encoded as nats-io/nkeys does (prefix byte, key, CRC16-XMODEM,
// base32 without padding). InvalidArgument for anything that is not a valid
// user seed; the message never contains the seed.
std::string user_public_key(std::string_view seed);

// The first user NKey seed in `text` (a seed file as `nk -gen user` writes
// it, a bare seed, or a .creds file), or "" if there is none.
std::string find_user_seed(std::string_view text);

}  // namespace dmm::detail
