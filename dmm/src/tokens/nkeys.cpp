// NKey decoding and the Ed25519 public key of a seed (OpenSSL's libcrypto,
// which nats.c already links).
#include "tokens/nkeys.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <array>
#include <cstdint>
#include <vector>

#include "dmm/errors.hpp"

namespace dmm::detail {
namespace {

constexpr std::uint8_t kPrefixSeed = 18 << 3;  // 'S'
constexpr std::uint8_t kPrefixUser = 20 << 3;  // 'U'
constexpr std::string_view kBase32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

std::uint16_t crc16(const std::uint8_t* data, std::size_t n) {
  std::uint16_t crc = 0;
  for (std::size_t i = 0; i < n; ++i) {
    crc ^= static_cast<std::uint16_t>(data[i] << 8);
    for (int bit = 0; bit < 8; ++bit)
      crc = static_cast<std::uint16_t>((crc & 0x8000) ? (crc << 1) ^ 0x1021 : crc << 1);
  }
  return crc;
}

// Base32 without padding; false on a character outside the alphabet.
bool base32_decode(std::string_view in, std::vector<std::uint8_t>& out) {
  std::uint32_t buffer = 0;
  int bits = 0;
  for (char c : in) {
    const auto v = kBase32.find(c);
    if (v == std::string_view::npos) return false;
    buffer = (buffer << 5) | static_cast<std::uint32_t>(v);
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<std::uint8_t>(buffer >> bits));
    }
  }
  return true;
}

std::string base32_encode(const std::uint8_t* data, std::size_t n) {
  std::string out;
  std::uint32_t buffer = 0;
  int bits = 0;
  for (std::size_t i = 0; i < n; ++i) {
    buffer = (buffer << 8) | data[i];
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      out += kBase32[(buffer >> bits) & 31];
    }
  }
  if (bits > 0) out += kBase32[(buffer << (5 - bits)) & 31];
  return out;
}

[[noreturn]] void not_a_seed(const char* why) {
  throw InvalidArgument(std::string("not a NATS user NKey seed (") + why +
                        "); give the seed `nk -gen user` or nsc wrote, starting with SU");
}

}  // namespace

std::string user_public_key(std::string_view seed) {
  std::vector<std::uint8_t> raw;
  struct Wipe {
    std::vector<std::uint8_t>& bytes;
    ~Wipe() { OPENSSL_cleanse(bytes.data(), bytes.size()); }
  } wipe{raw};
  raw.reserve(40);
  if (!base32_decode(seed, raw)) not_a_seed("a character outside base32");
  if (raw.size() != 36) not_a_seed("wrong length");
  const std::uint16_t crc = static_cast<std::uint16_t>(raw[34] | (raw[35] << 8));
  if (crc16(raw.data(), 34) != crc) not_a_seed("bad checksum");
  if ((raw[0] & 0xf8) != kPrefixSeed) not_a_seed("not a seed");
  const auto type = static_cast<std::uint8_t>(((raw[0] & 7) << 5) | ((raw[1] & 0xf8) >> 3));
  if (type != kPrefixUser) not_a_seed("the seed of an operator, account or server, not of a user");

  EVP_PKEY* key = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nullptr, raw.data() + 2, 32);
  std::array<std::uint8_t, 35> pub{};  // prefix, key, CRC16
  std::size_t len = 32;
  const bool ok = key && EVP_PKEY_get_raw_public_key(key, pub.data() + 1, &len) == 1 && len == 32;
  EVP_PKEY_free(key);
  if (!ok) not_a_seed("libcrypto refused its Ed25519 key");
  pub[0] = kPrefixUser;
  const auto pub_crc = crc16(pub.data(), 33);
  pub[33] = static_cast<std::uint8_t>(pub_crc & 0xff);
  pub[34] = static_cast<std::uint8_t>(pub_crc >> 8);
  return base32_encode(pub.data(), pub.size());
}

std::string find_user_seed(std::string_view text) {
  for (std::size_t at = text.find("SU"); at != std::string_view::npos; at = text.find("SU", at + 1)) {
    if (at > 0 && kBase32.find(text[at - 1]) != std::string_view::npos) continue;  // inside a word
    auto end = at;
    while (end < text.size() && kBase32.find(text[end]) != std::string_view::npos) ++end;
    if (end - at == 58) return std::string(text.substr(at, end - at));
  }
  return "";
}

}  // namespace dmm::detail
