"""The aggregator side of certificate renewal: an enrolled agent renews its certificate over
the bus with no token, signed with the certificate it renews (ARCHITECTURE.md §6).

A ``renew`` request on ``renew/{agent_id}`` goes through the one receive pipeline with
identities on (``Dispatcher.accept``: the signature verifies with a certificate the CA
issued, still valid, of a trainer, whose CN is the topic's agent; and the registry calls it
the agent's *current* certificate: a revoked or superseded one cannot renew). Then the CSR
(same key or a new one) is signed, recorded in the registry, which supersedes the old
certificate (``Registry.record_enrollment``: the aggregator's verifier refuses it from then
on, and the CRL lists it), and the answer goes to the agent's inbox, signed by the
aggregator. An agent whose certificate has expired, or was revoked, needs a new token.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.bus.base import Bus
from agent.config import AgentConfig
from agent.errors import IdentityError
from agent.identity.ca import CertificateAuthority, sign_csr
from agent.identity.ca_dir import write_crl
from agent.identity.certificates import fingerprint, identity_of
from agent.identity.local import Credentials
from agent.identity.registry import CertStatus, Registry
from agent.identity.verifier import Verifier
from agent.messages.bodies import RenewReply, RenewRequest
from agent.messages.envelope import Message
from agent.messages.kinds import Kind
from agent.messages.signing import Signer
from agent.messages.topics import INBOX, RENEW, classify
from agent.role import Identity, Role
from agent.runtime.listeners import Dispatcher, ListenerRegistry, RoundPolicy, Security
from agent.runtime.metrics import Metrics
from agent.runtime.outbox import Outbox

log = structlog.get_logger(__name__)

#: Hook awaited after each renewal: the new identity and the serials it superseded.
RenewedHook = Callable[[Identity, list[int]], Awaitable[None]]
#: A renew request is at most a CSR and a signature: far below this.
MAX_RENEW_PAYLOAD = 64 * 1024


class RenewalService:
    """Answers ``renew`` requests (see the module docstring). It has no bus loop of its own:
    ``EnrollmentService`` hands it the messages of ``renew/+`` (``serves``, ``dispatcher``).

    Args:
        outbox: the aggregator's outbox on the enrollment connection (signs the replies).
        ca: the federation CA (signs the certificates).
        registry: renewals are recorded here (superseding the old certificate).
        valid_days: validity of the renewed certificates.
        ca_dir: when given, ``ca_dir/crl.pem`` is rewritten with the superseded serial.
        on_renewed: awaited after each renewal (e.g. to regenerate the broker's files).
        min_interval: seconds before the same agent may renew again.
        max_clock_skew: the verifier's timestamp window (s).
    """

    def __init__(
        self,
        outbox: Outbox,
        ca: CertificateAuthority,
        registry: Registry,
        *,
        valid_days: int = 365,
        ca_dir: Path | None = None,
        on_renewed: RenewedHook | None = None,
        min_interval: float = 60.0,
        max_clock_skew: float = 300.0,
    ) -> None:
        self._outbox = outbox
        self._ca = ca
        self._registry = registry
        self._valid_days = valid_days
        self._ca_dir = ca_dir
        self._on_renewed = on_renewed
        self._min_interval = min_interval
        self._last: dict[str, float] = {}
        listeners = ListenerRegistry()
        listeners.register(Kind.RENEW, self._on_renew, rounds=RoundPolicy.ANY)
        verifier = Verifier(ca.cert, revoked=self._not_current, max_clock_skew=max_clock_skew)
        self.dispatcher = Dispatcher(
            federation=outbox.federation,
            registry=listeners,
            current_round=lambda: 0,
            max_payload=MAX_RENEW_PAYLOAD,
            security=Security(verifier),
            metrics=outbox.metrics,
        )

    def sign_with(self, signer: Signer) -> None:
        """Sign replies with ``signer`` from now on (a renewed aggregator certificate)."""
        self._outbox.signer = signer

    @property
    def filter(self) -> str:
        """The subscription this service needs (``renew/+``)."""
        return RENEW.filter(self._outbox.federation)

    def serves(self, topic: str) -> bool:
        where = classify(topic, self._outbox.federation)
        return where is not None and where[0] is RENEW

    def _not_current(self, identity: Identity) -> bool:
        status = self._registry.cert_status(identity.agent_id, identity.serial)
        if status is not CertStatus.CURRENT:
            log.warning("renewal_refused", agent_id=identity.agent_id, reason=str(status))
            return True
        return False

    async def _on_renew(self, message: Message[Any]) -> None:
        body: RenewRequest = message.body
        agent_id = message.sender
        try:
            reply = await self._answer(body, agent_id, message.identity)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug on one request must not stop the service
            log.exception("renewal_failed_unexpectedly", agent_id=agent_id)
            reply = RenewReply(
                agent_id=agent_id, status="error", nonce=body.nonce, reason="internal_error"
            )
        await self._outbox.try_send(INBOX, reply, round=0, agent_id=agent_id)

    async def _answer(
        self, body: RenewRequest, agent_id: str, identity: Identity | None
    ) -> RenewReply:
        def refuse(reason: str, detail: str) -> RenewReply:
            log.warning("renewal_refused", agent_id=agent_id, reason=reason, detail=detail)
            return RenewReply(
                agent_id=agent_id, status="error", nonce=body.nonce, reason=reason, detail=detail
            )

        if identity is None or body.agent_id != agent_id or identity.role is not Role.TRAINER:
            return refuse("sender_mismatch", f"a renewal for {body.agent_id!r} by {agent_id!r}")
        now = time.monotonic()
        if now - self._last.get(agent_id, -self._min_interval) < self._min_interval:
            return refuse("too_soon", "this agent renewed its certificate a moment ago")
        try:
            cert, superseded = await asyncio.to_thread(self._renew, body)
        except IdentityError as exc:
            return refuse(exc.reason, str(exc))
        self._last[agent_id] = now
        if superseded and self._ca_dir is not None:
            await asyncio.to_thread(write_crl, self._ca_dir, self._registry)
        if self._on_renewed is not None:
            try:
                await self._on_renewed(identity_of(cert), superseded)
            except asyncio.CancelledError:
                raise
            except Exception:  # the hook's failure is the operator's to see
                log.exception("renewal_hook_failed", agent_id=agent_id)
        log.info(
            "certificate_renewed",
            agent_id=agent_id,
            serial=cert.serial_number,
            fingerprint=fingerprint(cert),
            superseded=superseded,
            not_after=cert.not_valid_after_utc.isoformat(),
        )
        pem = cert.public_bytes(serialization.Encoding.PEM)
        return RenewReply(agent_id=agent_id, status="ok", nonce=body.nonce, cert=pem)

    def _renew(self, body: RenewRequest) -> tuple[x509.Certificate, list[int]]:
        try:
            csr = x509.load_pem_x509_csr(body.csr)
        except ValueError as exc:
            raise IdentityError("bad_csr", "the CSR is not a PEM PKCS#10 request") from exc
        cert = sign_csr(
            self._ca, csr, agent_id=body.agent_id, role=Role.TRAINER, valid_days=self._valid_days
        )
        return cert, self._registry.record_enrollment(identity_of(cert), cert)


def renewal_for(
    config: AgentConfig,
    bus: Bus,
    ca: CertificateAuthority,
    registry: Registry,
    *,
    metrics: Metrics | None = None,
    on_renewed: RenewedHook | None = None,
) -> RenewalService | None:
    """The aggregator's renewal service on the enrollment connection ``bus`` (None with
    identities off: its replies must be signed)."""
    if not config.identity.enabled:
        return None
    credentials = Credentials.load(
        config.identity, agent_id=config.agent_id, federation=config.federation
    )
    outbox = Outbox(
        bus,
        federation=config.federation,
        sender=config.agent_id,
        signer=credentials.signer,
        metrics=metrics,
    )
    return RenewalService(
        outbox,
        ca,
        registry,
        ca_dir=config.identity.ca_dir,
        on_renewed=on_renewed,
        max_clock_skew=config.identity.max_clock_skew,
    )
