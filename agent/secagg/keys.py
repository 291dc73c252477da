"""Key agreement and share encryption for SecAgg+.

- Key agreement: X25519 (RFC 7748) between two clients' round keys, then HKDF-SHA256
  (RFC 5869) with an ``info`` that names the purpose, the federation, the round and both
  clients (sorted, so u and v derive the same key). The output is 32 bytes: the full 256-bit
  seed of a pairwise mask, or the key of a share ciphertext.
- Share encryption: ChaCha20-Poly1305 (RFC 8439) with a random 96-bit nonce; the associated
  data binds the ciphertext to (federation, round, sender, recipient), so the aggregator, which
  relays it, can neither read it nor deliver it to anyone else undetected.

Bonawitz et al., CCS 2017, §4 (Protocol 0/1: KA.agree, AE.enc); Bell et al., CCS 2020, §4.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from agent.errors import CryptoError, ShareError

KEY_BYTES = 32
NONCE_BYTES = 12
MASK_PURPOSE = b"fedbus/secagg+/pairwise-mask"
SHARE_PURPOSE = b"fedbus/secagg+/share-encryption"


@dataclass(frozen=True, slots=True)
class RoundContext:
    """What every derived key and ciphertext is bound to."""

    federation: str
    round: int

    def info(self, purpose: bytes, a: str, b: str) -> bytes:
        """HKDF info / AEAD associated data: purpose, federation, round, the two ids sorted."""
        first, second = sorted((a, b))
        return b"\x00".join(
            (
                purpose,
                self.federation.encode(),
                str(self.round).encode(),
                first.encode(),
                second.encode(),
            )
        )


def generate() -> X25519PrivateKey:
    """A fresh X25519 private key (from the OS CSPRNG)."""
    return X25519PrivateKey.generate()


def public_bytes(key: X25519PrivateKey) -> bytes:
    """The raw 32-byte public key."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def private_bytes(key: X25519PrivateKey) -> bytes:
    """The raw 32-byte private key (only ever Shamir-shared, never sent or logged)."""
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def private_from_bytes(data: bytes) -> X25519PrivateKey:
    """The inverse of ``private_bytes``. Raises ``ShareError`` for a wrong length."""
    if len(data) != KEY_BYTES:
        raise ShareError(f"an X25519 private key is {KEY_BYTES} bytes, got {len(data)}")
    return X25519PrivateKey.from_private_bytes(data)


def agree(private: X25519PrivateKey, peer_public: bytes, *, info: bytes) -> bytes:
    """HKDF-SHA256(X25519(private, peer_public), salt=None, info) → 32 bytes.

    Raises:
        CryptoError: a malformed or low-order peer key (the agreement would be all zeros).
    """
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:
        raise CryptoError(f"X25519 agreement failed: {exc}") from exc
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


def encrypt(key: bytes, plaintext: bytes, *, associated_data: bytes) -> bytes:
    """ChaCha20-Poly1305: nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes)."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, associated_data)


def decrypt(key: bytes, blob: bytes, *, associated_data: bytes) -> bytes:
    """The inverse of ``encrypt``.

    Raises:
        ShareError: too short, tampered with, or bound to other parties/round/federation.
    """
    if len(blob) < NONCE_BYTES + 16:
        raise ShareError("share ciphertext too short")
    try:
        return ChaCha20Poly1305(key).decrypt(
            blob[:NONCE_BYTES], blob[NONCE_BYTES:], associated_data
        )
    except InvalidTag as exc:
        raise ShareError("share ciphertext does not authenticate") from exc
