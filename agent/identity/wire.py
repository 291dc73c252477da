"""Signed and sealed messages (DESIGN.md §3).

Signing. With identities on, a payload on the bus is not a bare envelope but::

    Signed = [MAGIC, envelope bytes, sender certificate (DER), ECDSA-SHA256 signature]

The signature covers the envelope bytes exactly as sent (FIPS 186-5 ECDSA over P-256 with
SHA-256), so nothing is re-encoded before checking. A receiver (``Verifier``) checks, before
any handler runs: the certificate was issued by the federation CA and is valid now; its CN is
the envelope's sender; the signature verifies; the timestamp is within ``max_clock_skew`` of
our clock (replays older than that are refused; newer ones are caught by the message-id
dedupe and the round guard); the sender's role may publish on the topic; and, where a
registry is consulted, the sender is not revoked.

Sealing. The bodies of updates and of SecAgg+ stage messages sent to the aggregator are
encrypted to the aggregator's per-run X25519 key with HPKE (RFC 9180, base mode,
DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305). The HPKE ``info`` binds the
ciphertext to (federation, round, sender, kind), so a ciphertext replayed under another
sender, round or kind does not open. The envelope's ``sealed`` flag says the body is sealed.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

import msgspec
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from agent.errors import (
    BadSignatureError,
    IdentityError,
    RevokedSenderError,
    SealError,
    SignerMismatchError,
    StaleTimestampError,
    UnknownSignerError,
    UnsignedError,
    WrongRoleError,
)
from agent.identity.ca import Identity, Role, verify_issued

MAGIC = "fedbus-signed/1"
#: Kinds whose bodies are sealed to the aggregator (``Kind`` values; plain strings here so
#: that this module does not import the message package, which imports it).
SEALED_KINDS = frozenset({"model_update", "masked_input", "share_keys", "unmask", "metrics"})
#: Kinds exempt from the timestamp window and the duplicate check: idempotent state
#: assertions whose will copy is signed at connect time (``status``).
TIMELESS_KINDS = frozenset({"status"})
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)


class Signed(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """The signed wire form: ``[MAGIC, envelope, cert, signature]``."""

    magic: str
    envelope: bytes
    cert: Annotated[bytes, msgspec.Meta(max_length=4096)]
    signature: Annotated[bytes, msgspec.Meta(max_length=160)]


_encoder = msgspec.msgpack.Encoder()
_signed_decoder = msgspec.msgpack.Decoder(Signed)


def is_signed(payload: bytes) -> bool:
    """True when ``payload`` has the signed wire form (a 4-array starting with MAGIC)."""
    # msgpack fixarray of 4 (0x94), then the fixstr/str8 MAGIC
    return payload[:1] == b"\x94" and MAGIC.encode() in payload[:24]


def unwrap(payload: bytes) -> tuple[bytes, Signed | None]:
    """The envelope bytes of a payload, and its signature wrapper if it has one.

    Raises:
        msgspec.DecodeError: a payload that looks signed but is malformed.
    """
    if not is_signed(payload):
        return payload, None
    signed = _signed_decoder.decode(payload)
    if signed.magic != MAGIC:
        raise msgspec.DecodeError("bad signed-message magic")
    return signed.envelope, signed


@dataclass(frozen=True, slots=True)
class Signer:
    """Signs envelopes with this agent's key; attaches its certificate."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    #: the certificate as sent with every message (DER), encoded once
    der: bytes = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "der", self.cert.public_bytes(serialization.Encoding.DER))

    def sign(self, envelope: bytes) -> bytes:
        """The signed payload for ``envelope`` (see the module docstring)."""
        signature = self.key.sign(envelope, ec.ECDSA(hashes.SHA256()))
        return _encoder.encode(Signed(MAGIC, envelope, self.der, signature))


class Verifier:
    """Checks signed messages against the federation CA (see the module docstring).

    Args:
        ca: the federation CA certificate.
        revoked: called with a verified identity; True refuses it (the aggregator's registry).
        max_clock_skew: seconds.
        cache_size: verified certificates remembered (by DER bytes).
    """

    def __init__(
        self,
        ca: x509.Certificate,
        *,
        revoked: Callable[[Identity], bool] | None = None,
        max_clock_skew: float = 300.0,
        cache_size: int = 4096,
    ) -> None:
        self._ca = ca
        self._revoked = revoked
        self._skew = max_clock_skew
        self._cache: OrderedDict[bytes, tuple[Identity, ec.EllipticCurvePublicKey, float]] = (
            OrderedDict()
        )
        self._cache_size = cache_size

    def verify(
        self,
        signed: Signed | None,
        *,
        sender: str,
        timestamp: float,
        publisher: Role,
        timeless: bool = False,
    ) -> Identity:
        """The sender's identity, or a ``ProtocolError`` naming why the message is refused.

        Args:
            signed: the wrapper (None: the message was not signed).
            sender, timestamp: from the envelope inside.
            timeless: skip the timestamp window (a last will is built when its agent
                connects and published by the broker when it dies, maybe hours later).
            publisher: the role the topic's publisher must have.

        Raises:
            UnsignedError, UnknownSignerError, SignerMismatchError, BadSignatureError,
            StaleTimestampError, WrongRoleError, RevokedSenderError.
        """
        if signed is None:
            raise UnsignedError("the message is not signed")
        identity, public = self._certificate(signed.cert)
        if identity.agent_id != sender:
            raise SignerMismatchError(f"signed by {identity.agent_id!r}, sent as {sender!r}")
        try:
            public.verify(signed.signature, signed.envelope, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature as exc:
            raise BadSignatureError("the signature does not verify") from exc
        if not timeless and abs(time.time() - timestamp) > self._skew:
            raise StaleTimestampError(f"timestamp {timestamp:.0f} is outside the window")
        if identity.role is not publisher:
            raise WrongRoleError(f"a {identity.role} may not publish here")
        if self._revoked is not None and self._revoked(identity):
            raise RevokedSenderError(f"{identity.agent_id}: revoked or not enrolled")
        return identity

    def _certificate(self, der: bytes) -> tuple[Identity, ec.EllipticCurvePublicKey]:
        hit = self._cache.get(der)
        now = time.time()
        if hit is not None and now < hit[2]:
            self._cache.move_to_end(der)
            return hit[0], hit[1]
        try:
            cert = x509.load_der_x509_certificate(der)
            identity = verify_issued(self._ca, cert)
        except ValueError as exc:
            raise UnknownSignerError(f"unreadable certificate: {exc}") from exc
        except IdentityError as exc:
            raise UnknownSignerError(f"certificate refused ({exc.reason}): {exc}") from exc
        public = cert.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise UnknownSignerError("the certificate's key is not ECDSA")
        self._cache[der] = (identity, public, cert.not_valid_after_utc.timestamp())
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return identity, public


# -- sealing ---------------------------------------------------------------------------------


def seal_info(*, federation: str, round: int, sender: str, kind: str) -> bytes:
    """HPKE ``info``: what a sealed body is bound to."""
    return "\x00".join(("fedbus/seal/1", federation, str(round), sender, str(kind))).encode()


def seal(body: bytes, public: X25519PublicKey, info: bytes) -> bytes:
    """HPKE single-shot encryption of ``body`` (enc ‖ ciphertext ‖ tag)."""
    return _SUITE.encrypt(body, public, info=info)


def open_sealed(blob: bytes, private: X25519PrivateKey, info: bytes) -> bytes:
    """The inverse of ``seal``. Raises ``SealError`` (reason ``unsealable``)."""
    try:
        return _SUITE.decrypt(blob, private, info=info)
    except Exception as exc:  # the binding raises several types for a bad ciphertext
        raise SealError("the sealed body does not open") from exc
