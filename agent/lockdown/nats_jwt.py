"""NATS JWTs for the auth callout (``agent.runtime.auth_callout``): decode the server's
authorization request, encode the user and authorization-response claims.

A NATS JWT is an RFC 7519 JWT whose header is ``{"typ":"JWT","alg":"ed25519-nkey"}`` and
whose signature is Ed25519 (RFC 8032) by the issuer's NKey over ``header.payload``
(base64url, unpadded); ``jti`` is the base32 SHA-512/256 of the claims without it, and the
type-specific part sits under ``nats`` with ``type`` and ``version: 2`` (the claim formats
of github.com/nats-io/jwt v2: ``authorization_claims.go``, ``user_claims.go``). The keys are
NKeys (``nkeys``, the NATS project's library): the issuer is an *account* key (``A…``), the
server signs requests with its *server* key (``N…``), the user is the ``user_nkey`` (``U…``)
the server generated for the connection.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import nkeys
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.atomic import PRIVATE, write_atomic
from agent.errors import IdentityError

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
#: The callout's account NKey seed, in the CA directory (``fedbus broker-config nats
#: --auth-callout`` creates it; the aggregator serves the callout when it is there).
CALLOUT_SEED = "nats-callout.seed"
#: The system account's user NKey seed, in the CA directory (created with the callout's):
#: the aggregator closes revoked agents' connections with it (``agent.runtime.evict``).
SYSTEM_SEED = "nats-system.seed"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_or_create_issuer(path: Path) -> nkeys.KeyPair:
    """The account NKey that signs the callout's JWTs, from its seed file (``S…``); a new
    one is written (0600) when ``path`` does not exist.

    Raises:
        IdentityError: reason ``unreadable``: a file that is not an account seed.
        OSError: it cannot be written.
    """
    return _load_or_create(path, nkeys.PREFIX_BYTE_ACCOUNT, b"A", "an account")


def load_or_create_system_user(path: Path) -> nkeys.KeyPair:
    """The system account's user NKey (``SYSTEM_SEED``), as ``load_or_create_issuer``."""
    return _load_or_create(path, nkeys.PREFIX_BYTE_USER, b"U", "a user")


def _load_or_create(path: Path, prefix: int, public: bytes, what: str) -> nkeys.KeyPair:
    if not path.exists():
        seed = nkeys.encode_seed(os.urandom(32), prefix)
        write_atomic(path, seed + b"\n", mode=PRIVATE)
    try:
        pair = nkeys.from_seed(bytearray(path.read_bytes().strip()))
    except (OSError, nkeys.NkeysError) as exc:
        raise IdentityError("unreadable", f"{path} is not an NKey seed: {exc}") from exc
    if not pair.public_key.startswith(public):
        raise IdentityError("unreadable", f"{path} is not {what} NKey seed")
    return pair


def _public(key: str) -> Ed25519PublicKey:
    """The Ed25519 key of an encoded public NKey (prefix byte, 32 bytes, CRC-16 LE)."""
    raw = base64.b32decode(key + "=" * (-len(key) % 8))
    if len(raw) != 35 or nkeys.crc16_checksum(raw[:33]) != raw[33:]:
        raise ValueError("not a public NKey")
    return Ed25519PublicKey.from_public_bytes(raw[1:33])


def public_key(pair: nkeys.KeyPair) -> str:
    return str(pair.public_key.decode())


def encode(claims: dict[str, Any], issuer: nkeys.KeyPair) -> str:
    """``claims`` signed by ``issuer``: ``iss``, ``iat`` and ``jti`` are set here."""
    body = dict(claims, iss=public_key(issuer), iat=int(time.time()))
    body.pop("jti", None)
    digest = hashlib.new("sha512_256", json.dumps(body, sort_keys=True).encode()).digest()
    body["jti"] = base64.b32encode(digest).decode().rstrip("=")
    signing_input = f"{_b64(json.dumps(_HEADER).encode())}.{_b64(json.dumps(body).encode())}"
    signature = issuer.sign(signing_input.encode())
    return f"{signing_input}.{_b64(signature)}"


def decode(token: str) -> dict[str, Any]:
    """The claims of ``token``, after checking its Ed25519 signature by its own ``iss``
    (what the server signed; its key is not known in advance) and ``exp``.

    Raises:
        IdentityError: reason ``bad_request``: not a NATS JWT, a bad signature, expired.
    """
    try:
        claims = _verified(token)
    except (ValueError, KeyError, TypeError, AttributeError, InvalidSignature) as exc:
        raise IdentityError("bad_request", f"not a valid NATS JWT: {exc}") from exc
    exp = claims.get("exp")
    if isinstance(exp, int) and exp < time.time():
        raise IdentityError("bad_request", "the authorization request has expired")
    return claims


def _verified(token: str) -> dict[str, Any]:
    header_b64, payload_b64, signature_b64 = token.split(".")
    header = json.loads(_unb64(header_b64))
    claims = json.loads(_unb64(payload_b64))
    if header.get("alg") != _HEADER["alg"] or not isinstance(claims, dict):
        raise ValueError("not an ed25519-nkey JWT")
    signer = _public(str(claims["iss"]))
    signer.verify(_unb64(signature_b64), f"{header_b64}.{payload_b64}".encode())
    return claims


def user_claims(
    user_nkey: str,
    *,
    name: str,
    publish: list[str],
    subscribe: list[str],
    expires: int,
    account: str = "$G",
) -> dict[str, Any]:
    """A user JWT's claims: ``user_nkey`` placed in ``account`` (``$G``, the global account
    of a config-file server) with these allow-lists, until ``expires`` (Unix seconds)."""
    return {
        "sub": user_nkey,
        "aud": account,
        "name": name,
        "exp": expires,
        "nats": {
            "pub": {"allow": publish},
            "sub": {"allow": subscribe},
            "subs": -1,
            "data": -1,
            "payload": -1,
            "type": "user",
            "version": 2,
        },
    }


def response_claims(
    user_nkey: str, server_id: str, *, jwt: str = "", error: str = ""
) -> dict[str, Any]:
    """An authorization response for ``user_nkey`` to ``server_id``: the user JWT, or the
    error that refuses the connection."""
    nats: dict[str, Any] = {"type": "authorization_response", "version": 2}
    if jwt:
        nats["jwt"] = jwt
    else:
        nats["error"] = error or "not authorized"
    return {"sub": user_nkey, "aud": server_id, "nats": nats}
