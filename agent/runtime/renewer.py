"""The trainer side of certificate renewal: renew before the certificate expires, with no
token, signed with the certificate in use (``agent.runtime.renewal`` answers).

Every ``check_every`` seconds the renewer looks at the certificate it signs with; once less
than ``renew_before`` seconds of it are left it sends a ``renew`` request (a CSR for the same
key) on ``renew/{agent_id}`` and waits for the ``renew_reply`` on its inbox. A certificate
that the federation CA issued for this agent and this key is then written over the old one
(``agent.identity.pem``, atomic), becomes the signer of every later message at once (the
aggregator refuses the superseded one from then on), and is loaded into the TLS context the
bus connects with, so the next broker session presents it too. A refusal or no answer is
logged and retried at the next check; the old certificate stays in use meanwhile.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.config import AgentConfig
from agent.errors import IdentityError, TransportError
from agent.identity.ca import build_csr
from agent.identity.certificates import verify_issued
from agent.identity.pem import write_pem
from agent.messages.bodies import RenewReply, RenewRequest
from agent.messages.envelope import Message
from agent.messages.signing import Signer
from agent.messages.topics import RENEW
from agent.runtime.outbox import Outbox

if TYPE_CHECKING:
    from prometheus_client import Gauge

log = structlog.get_logger(__name__)

_DAY = 86400.0


@dataclass(frozen=True, slots=True)
class RenewalFiles:
    """Where the renewed certificate goes: ``cert_file`` (``[identity]``) and, when the
    bus presents another copy (``[tls] cert_file``), that one too, with its ``tls_key``."""

    cert_file: Path
    tls_cert: Path | None = None
    tls_key: Path | None = None


@dataclass(slots=True)
class CertificateRenewer:
    """Renews this agent's certificate before it expires (see the module docstring).

    Args:
        outbox: the agent's outbox; its ``signer`` is the certificate renewed, and replaced.
        ca: the federation CA (a renewed certificate must chain to it).
        files: where the certificate lives on disk.
        renew_before: seconds before ``notAfter`` from which to renew (0: never).
        check_every: seconds between checks.
        reply_timeout: seconds to wait for the answer.
        tls: the bus's TLS context, reloaded with the new certificate (None: plaintext).
        metrics_registry: where ``fedbus_certificate_expiry_timestamp_seconds`` goes.
    """

    outbox: Outbox
    ca: x509.Certificate
    files: RenewalFiles
    renew_before: float = 30 * _DAY
    check_every: float = 3600.0
    reply_timeout: float = 30.0
    tls: ssl.SSLContext | None = None
    metrics_registry: Any = None
    clock: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))
    _waiting: dict[bytes, asyncio.Future[RenewReply]] = field(default_factory=dict)
    _expiry: Gauge | None = None

    def __post_init__(self) -> None:
        if self.metrics_registry is not None:
            from prometheus_client import Gauge  # only where metrics are served (light agent)

            self._expiry = Gauge(
                "fedbus_certificate_expiry_timestamp_seconds",
                "notAfter of the certificate this agent signs with (Unix seconds).",
                registry=self.metrics_registry,
            )
            self._expiry.set(self._signer.cert.not_valid_after_utc.timestamp())

    @property
    def _signer(self) -> Signer:
        signer = self.outbox.signer
        if signer is None:
            raise IdentityError("unreadable", "renewal needs identities on")
        return signer

    def seconds_left(self) -> float:
        """Seconds until the certificate in use expires (negative once it has)."""
        return (self._signer.cert.not_valid_after_utc - self.clock()).total_seconds()

    def due(self) -> bool:
        return self.renew_before > 0 and self.seconds_left() <= self.renew_before

    async def run(self) -> None:
        """Check, renew when due, sleep; until cancelled."""
        while True:
            if self.due():
                try:
                    await self.renew()
                except IdentityError as exc:  # expired already: only a new token helps
                    log.warning(
                        "certificate_renewal_impossible", reason=exc.reason, detail=str(exc)
                    )
            await asyncio.sleep(self.check_every)

    async def on_reply(self, message: Message[Any]) -> None:
        """The ``renew_reply`` listener (the trainer registers it on its inbox)."""
        reply: RenewReply = message.body
        waiter = self._waiting.get(reply.nonce)
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)

    async def renew(self) -> bool:
        """One renewal. Returns True when the new certificate is in use."""
        signer = self._signer
        identity = verify_issued(self.ca, signer.cert)
        csr = build_csr(signer.key, agent_id=identity.agent_id, federation=identity.federation)
        nonce = os.urandom(16)
        waiter: asyncio.Future[RenewReply] = asyncio.get_running_loop().create_future()
        self._waiting[nonce] = waiter
        body = RenewRequest(
            agent_id=identity.agent_id,
            csr=csr.public_bytes(serialization.Encoding.PEM),
            nonce=nonce,
        )
        left_days = round(self.seconds_left() / _DAY, 2)
        log.info("certificate_renewing", days_left=left_days, serial=signer.cert.serial_number)
        try:
            await self.outbox.send(RENEW, body, round=0, agent_id=identity.agent_id)
            async with asyncio.timeout(self.reply_timeout):
                reply = await waiter
        except (TransportError, TimeoutError) as exc:
            log.warning("certificate_renewal_failed", reason="no_answer", detail=str(exc))
            return False
        finally:
            self._waiting.pop(nonce, None)
        if reply.status != "ok" or reply.cert is None:
            log.warning("certificate_renewal_failed", reason=reply.reason, detail=reply.detail)
            return False
        try:
            return await asyncio.to_thread(self._install, reply.cert)
        except (IdentityError, ValueError, OSError, ssl.SSLError) as exc:
            log.warning("certificate_renewal_failed", reason="bad_certificate", detail=str(exc))
            return False

    def _install(self, pem: bytes) -> bool:
        signer = self._signer
        cert = x509.load_pem_x509_certificate(pem)
        identity = verify_issued(self.ca, cert)
        old = verify_issued(self.ca, signer.cert, at=cert.not_valid_before_utc)
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        if (
            identity.agent_id != old.agent_id
            or identity.role is not old.role
            or cert.public_key().public_bytes(serialization.Encoding.DER, public)
            != signer.key.public_key().public_bytes(serialization.Encoding.DER, public)
        ):
            raise IdentityError("wrong_identity", "the renewed certificate is not ours")
        write_pem(self.files.cert_file, cert)
        tls_cert = self.files.tls_cert
        if tls_cert is not None and tls_cert.resolve() != self.files.cert_file.resolve():
            write_pem(tls_cert, cert)
        self.outbox.signer = Signer(signer.key, cert)
        if self.tls is not None:
            chain = tls_cert or self.files.cert_file
            key = str(self.files.tls_key) if self.files.tls_key is not None else None
            self.tls.load_cert_chain(str(chain), key)
        if self._expiry is not None:
            self._expiry.set(cert.not_valid_after_utc.timestamp())
        log.info(
            "certificate_renewed",
            serial=cert.serial_number,
            superseded=old.serial,
            not_after=cert.not_valid_after_utc.isoformat(),
        )
        return True


def renewer_for(
    config: AgentConfig, outbox: Outbox, ca: x509.Certificate, tls: ssl.SSLContext | None
) -> CertificateRenewer | None:
    """The renewer a trainer with identities on runs (None: ``renew_before_days = 0``)."""
    ident = config.identity
    if ident.cert_file is None or ident.renew_before_days == 0:
        return None
    return CertificateRenewer(
        outbox=outbox,
        ca=ca,
        files=RenewalFiles(ident.cert_file, config.tls.cert_file, config.tls.key_file),
        renew_before=ident.renew_before_days * _DAY,
        check_every=ident.renew_check_every,
        tls=tls,
        metrics_registry=outbox.metrics.registry,
    )
