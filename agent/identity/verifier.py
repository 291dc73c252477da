"""Checking signed messages against the federation CA (ARCHITECTURE.md §3).

A receiver checks a signed message (``agent.messages.signing``), before any handler runs: the
certificate was issued by the federation CA and is valid now; its CN is the envelope's
sender; the signature verifies (FIPS 186-5 ECDSA over P-256 with SHA-256, over the envelope
bytes as sent); the timestamp is within ``max_clock_skew`` of our clock (replays older than
that are refused; newer ones are caught by the message-id dedupe and the round guard); the
sender's role may publish on the topic; and, where a registry is consulted, the sender is not
revoked.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from agent.errors import (
    BadSignatureError,
    IdentityError,
    RevokedSenderError,
    SignerMismatchError,
    StaleTimestampError,
    UnknownSignerError,
    UnsignedError,
    WrongRoleError,
)
from agent.identity.certificates import verify_issued
from agent.messages.signing import Signed
from agent.role import Identity, Role


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
            _VERIFIED.verify(public, signed)
        except InvalidSignature as exc:
            raise BadSignatureError("the signature does not verify") from exc
        except Exception as exc:
            raise BadSignatureError(f"unusable signature: {type(exc).__name__}") from exc
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
            public = cert.public_key()
            expires = cert.not_valid_after_utc.timestamp()
        except IdentityError as exc:
            raise UnknownSignerError(f"certificate refused ({exc.reason}): {exc}") from exc
        except Exception as exc:
            # ValueError, x509.InvalidVersion (a flipped bit in the version), UnsupportedAlgorithm:
            # whatever the parser raises on these bytes, the message is refused, no traceback.
            raise UnknownSignerError(f"unreadable certificate: {type(exc).__name__}") from exc
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise UnknownSignerError("the certificate's key is not ECDSA")
        self._cache[der] = (identity, public, expires)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return identity, public


class _Verified:
    """Signatures verified lately in this process, by (certificate, signature), with the
    envelope each covers: the members of a fleet process (``agent.fleet``) receive the same
    broadcasts, and ECDSA verification was a fifth of a fleet process's event loop at 1,000
    agents (issue 15). A hit needs the very envelope bytes that verified (compared in full),
    so a signature taken to another envelope is verified, and refused, as always."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._seen: OrderedDict[tuple[bytes, bytes], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def verify(self, public: ec.EllipticCurvePublicKey, signed: Signed) -> None:
        """Raises InvalidSignature (or what ``public.verify`` raises) unless it verifies."""
        key = (signed.cert, signed.signature)
        with self._lock:
            if self._seen.get(key) == signed.envelope:
                self._seen.move_to_end(key)
                return
        public.verify(signed.signature, signed.envelope, ec.ECDSA(hashes.SHA256()))
        if len(signed.envelope) > MEMO_MAX_BYTES:  # a model: its bytes would stay alive
            return
        with self._lock:
            self._seen[key] = signed.envelope
            if len(self._seen) > self._size:
                self._seen.popitem(last=False)


#: Envelopes larger than this are verified every time, never remembered.
MEMO_MAX_BYTES = 1 << 20
_VERIFIED = _Verified(64)
