"""Sealed message bodies (ARCHITECTURE.md §3).

The bodies of updates and of SecAgg+ stage messages sent to the aggregator are encrypted to
the aggregator's per-run X25519 key with HPKE (RFC 9180, base mode, DHKEM(X25519,
HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305). The HPKE ``info`` binds the ciphertext to
(federation, round, sender, kind), so a ciphertext replayed under another sender, round or
kind does not open. The envelope's ``sealed`` flag says the body is sealed.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from agent.errors import SealError
from agent.messages.kinds import Kind

#: Kinds whose bodies are sealed to the aggregator.
SEALED_KINDS = frozenset(
    {Kind.MODEL_UPDATE, Kind.MASKED_INPUT, Kind.SHARE_KEYS, Kind.UNMASK, Kind.METRICS}
    | {Kind.PEER_MODEL}  # sealed to the recipient peer's key, not the aggregator's
)
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)


def seal_info(*, federation: str, round: int, sender: str, kind: Kind) -> bytes:
    """HPKE ``info``: what a sealed body is bound to (UTF-8, fields joined by NUL)."""
    return "\x00".join(("fedbus/seal/1", federation, str(round), sender, str(kind))).encode()


def seal(body: bytes, public: X25519PublicKey, info: bytes) -> bytes:
    """HPKE single-shot encryption of ``body`` (enc ‖ ciphertext ‖ tag; 48 bytes longer)."""
    return _SUITE.encrypt(body, public, info=info)


def open_sealed(blob: bytes, private: X25519PrivateKey, info: bytes) -> bytes:
    """The inverse of ``seal``. Raises ``SealError`` (reason ``unsealable``)."""
    try:
        return _SUITE.decrypt(blob, private, info=info)
    except Exception as exc:  # the binding raises several types for a bad ciphertext
        raise SealError("the sealed body does not open") from exc
