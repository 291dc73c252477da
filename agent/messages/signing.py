"""Signed messages: the wire form (ARCHITECTURE.md §3).

With identities on, a payload on the bus is not a bare envelope but::

    Signed = [MAGIC, envelope bytes, sender certificate (DER), ECDSA-SHA256 signature]

The signature covers the envelope bytes exactly as sent (FIPS 186-5 ECDSA over P-256 with
SHA-256), so nothing is re-encoded before checking. ``Signer`` builds this form; a receiver
checks it with ``agent.identity.verifier.Verifier`` (certificate chain, sender, signature,
timestamp, role, revocation) before any handler runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

import msgspec
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

if TYPE_CHECKING:
    from cryptography import x509  # X.509 only with identities on (issue 15)

MAGIC = "fedbus-signed/1"


class Signed(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """The signed wire form: ``[MAGIC, envelope, cert, signature]``.

    Attributes:
        magic: ``MAGIC``.
        envelope: the msgpack envelope bytes the signature covers.
        cert: the sender's certificate, DER, at most 4096 bytes.
        signature: ECDSA-SHA256 over ``envelope``, DER-encoded (r, s), at most 160 bytes.
    """

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
