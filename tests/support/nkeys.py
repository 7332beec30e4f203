#!/usr/bin/python3
"""NATS NKeys and JWTs for the tests: what `nk` and `nsc` would make.

  nkeys.py user DIR       DIR/user.nk (a user seed, SU...) and DIR/user.pub (U...)
  nkeys.py creds DIR      DIR/user.creds (user JWT + seed), DIR/resolver.conf
                          (operator JWT, MEMORY resolver, a system account and
                          the user's account preloaded, JetStream enabled) and DIR/other.creds (a user of
                          an account the server does not know)

An NKey is base32 (no padding) of prefix byte(s) + Ed25519 key + CRC16-XMODEM
(little-endian); a JWT is header.claims.signature in base64url, signed with
Ed25519 ("ed25519-nkey"), claims as nats-io/jwt v2 writes them.
"""
import base64
import hashlib
import json
import os
import sys
import time

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SEED = 18 << 3
OPERATOR, ACCOUNT, USER = 14 << 3, 0, 20 << 3


def crc16(data):
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def encode(raw):
    raw = raw + crc16(raw).to_bytes(2, "little")
    return base64.b32encode(raw).decode().rstrip("=")


class Key:
    def __init__(self, prefix):
        self.prefix = prefix
        self.private = Ed25519PrivateKey.generate()
        self.raw_seed = self.private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        raw_public = self.private.public_key().public_bytes(serialization.Encoding.Raw,
                                                             serialization.PublicFormat.Raw)
        self.public = encode(bytes([prefix]) + raw_public)
        self.seed = encode(bytes([SEED | (prefix >> 5), (prefix & 31) << 3]) + self.raw_seed)

    def sign(self, data):
        return self.private.sign(data)


def b64(data):
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def jwt(issuer, subject, name, nats):
    claims = {"iat": int(time.time()), "iss": issuer.public, "name": name, "sub": subject.public, "nats": nats}
    digest = hashlib.new("sha512_256", json.dumps(claims, sort_keys=True).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    header = b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    payload = b64(json.dumps(claims).encode())
    signed = f"{header}.{payload}"
    return f"{signed}.{b64(issuer.sign(signed.encode()))}"


def write(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def creds(user_jwt, user):
    return (f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n"
            "NKEYs are sensitive and should be treated as secrets.\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{user.seed}\n------END USER NKEY SEED------\n\n"
            "*************************************************************\n")


UNLIMITED = {"subs": -1, "data": -1, "payload": -1}


def user_claims():
    return {"pub": {}, "sub": {}, **UNLIMITED, "type": "user", "version": 2}


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("user", "creds"):
        sys.exit(__doc__)
    what, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    if what == "user":
        user = Key(USER)
        write(os.path.join(out, "user.nk"), user.seed + "\n")
        write(os.path.join(out, "user.pub"), user.public + "\n")
        return
    operator, system, account, user = Key(OPERATOR), Key(ACCOUNT), Key(ACCOUNT), Key(USER)
    operator_jwt = jwt(operator, operator, "dmm-test-operator",
                       {"system_account": system.public, "type": "operator", "version": 2})
    system_jwt = jwt(operator, system, "SYS", {"limits": {**UNLIMITED, "imports": -1, "exports": -1, "conn": -1,
                                                          "leaf": -1}, "type": "account", "version": 2})
    limits = {**UNLIMITED, "imports": -1, "exports": -1, "wildcards": True, "conn": -1, "leaf": -1,
              "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
    account_jwt = jwt(operator, account, "dmm-test-account",
                      {"limits": limits, "default_permissions": {"pub": {}, "sub": {}}, "type": "account",
                       "version": 2})
    write(os.path.join(out, "user.creds"), creds(jwt(account, user, "dmm-test-user", user_claims()), user))
    write(os.path.join(out, "resolver.conf"),
          f"operator: {operator_jwt}\nsystem_account: {system.public}\nresolver: MEMORY\n"
          f"resolver_preload: {{\n  {system.public}: {system_jwt}\n  {account.public}: {account_jwt}\n}}\n")
    # A user signed by an account the operator never issued: the server refuses it.
    stranger, other = Key(ACCOUNT), Key(USER)
    write(os.path.join(out, "other.creds"), creds(jwt(stranger, other, "dmm-test-stranger", user_claims()), other))


if __name__ == "__main__":
    main()
