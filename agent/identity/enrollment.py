"""Enrollment over the bus: a device trades a CSR and a one-time token for a certificate.

::

    device                                             aggregator (EnrollmentService)
      key = new_key()          (never leaves the device)
      subscribe fl/{fed}/enroll_reply/{id}
      publish   fl/{fed}/enroll/{id}   EnrollRequest{id, CSR, token}  ──▶
                                          check the CSR (RFC 2986), redeem the token,
                                          sign (role trainer), record in the registry
                ◀── EnrollReply{ok, cert, CA cert}  or  {error, reason, detail}
      check: CA fingerprint == the pinned one, cert issued by that CA (RFC 5280),
             cert's key == our key, CN == our id

Enrollment messages are ordinary *unsigned* envelopes: the device has no identity yet. Their
security rests on the token (256 random bits, single use, expiring, stored only as a SHA-256
in the registry, bound to one agent id) and on the device pinning the CA by the SHA-256
fingerprint of its certificate, which the operator hands over out of band. A man in the
middle can refuse service but cannot obtain a certificate without a token, nor give the
device a certificate from another CA. On a locked-down broker, unenrolled devices reach the
broker with the shared ``enroll`` identity, which may use these two topics only.

A device that enrolls again (a new token from the operator, a new key) gets a new
certificate; its previous one is revoked as superseded (``Registry.record_enrollment``).

Refusal reasons (``EnrollReply.reason``, and ``IdentityError.reason`` on the device):
``bad_token``, ``expired_token``, ``used_token``, ``wrong_agent`` (the token names another
agent id), ``bad_csr``, ``sender_mismatch`` (the request's agent id differs from its topic's),
``role_conflict`` (the id belongs to the aggregator or the enroll identity), ``malformed``,
``wrong_federation``, ``internal_error``; on the device only also
``fingerprint_mismatch``, ``broker_unreachable``, ``no_reply``, ``bad_reply``, ``wrong_key``
and those of ``verify_issued``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.bus.base import Bus, BusMessage, BusSettings
from agent.errors import (
    BusTimeoutError,
    IdentityError,
    NotConnectedError,
    ProtocolError,
    TransportError,
)
from agent.identity.ca import CertificateAuthority, build_csr, new_key, sign_csr
from agent.identity.certificates import NAME_RE, fingerprint, identity_of, verify_issued
from agent.identity.pem import PrivateKey
from agent.identity.registry import Registry, hash_token, write_crl
from agent.messages.bodies import EnrollReply, EnrollRequest
from agent.messages.codec import decode, encode
from agent.messages.kinds import Kind
from agent.messages.topics import ENROLL, ENROLL_REPLY, classify
from agent.role import Identity, Role

if TYPE_CHECKING:
    from agent.bus.url import TlsFiles

log = structlog.get_logger(__name__)

_PEM = serialization.Encoding.PEM
_FINGERPRINT_RE = re.compile(r"^[0-9a-f]{64}$")
#: Largest enrollment message accepted (a request is well under 2 KiB).
MAX_ENROLL_PAYLOAD = 32 * 1024


@dataclass(frozen=True, slots=True)
class Enrolled:
    """What a successful enrollment gives the device."""

    key: PrivateKey
    cert: x509.Certificate
    ca_cert: x509.Certificate
    identity: Identity


def normalize_fingerprint(value: str) -> str:
    """A SHA-256 fingerprint as 64 lower-case hex digits; colons and spaces (as ``openssl
    x509 -fingerprint -sha256`` prints it) are accepted.

    Raises:
        IdentityError: reason ``bad_fingerprint``: not 32 bytes of hex.
    """
    cleaned = re.sub(r"[\s:]", "", value).lower()
    if not _FINGERPRINT_RE.match(cleaned):
        raise IdentityError(
            "bad_fingerprint", "the CA fingerprint must be a SHA-256: 64 hex digits"
        )
    return cleaned


def check_issued(
    ca_cert: x509.Certificate,
    cert: x509.Certificate,
    *,
    key: PrivateKey,
    ca_fingerprint: str,
    agent_id: str | None = None,
    federation: str | None = None,
) -> Identity:
    """The device's checks on a certificate it received (online, or imported offline).

    Checks that the CA certificate is the pinned one (SHA-256 of its DER), that it issued
    ``cert`` and ``cert`` is valid now (RFC 5280 signature and validity), that ``cert``
    certifies our own public key, and that it names ``agent_id`` and ``federation`` (when
    given) with the trainer role.

    Raises:
        IdentityError: reason ``bad_fingerprint``, ``fingerprint_mismatch``,
            ``unknown_issuer``, ``bad_signature``, ``expired``, ``wrong_federation``,
            ``bad_certificate``, ``wrong_key`` or ``wrong_identity``.
    """
    pinned = normalize_fingerprint(ca_fingerprint)
    got = fingerprint(ca_cert)
    if got != pinned:
        raise IdentityError(
            "fingerprint_mismatch",
            f"the CA certificate's SHA-256 fingerprint is {got}, not the pinned {pinned}: "
            "this is not your federation's CA",
        )
    identity = verify_issued(ca_cert, cert)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    ours = key.public_key().public_bytes(serialization.Encoding.DER, spki)
    if cert.public_key().public_bytes(serialization.Encoding.DER, spki) != ours:
        raise IdentityError("wrong_key", "the certificate is not for this device's key")
    if agent_id is not None and identity.agent_id != agent_id:
        raise IdentityError(
            "wrong_identity", f"the certificate names {identity.agent_id!r}, not {agent_id!r}"
        )
    if federation is not None and identity.federation != federation:
        raise IdentityError(
            "wrong_identity",
            f"the certificate is for federation {identity.federation!r}, not {federation!r}",
        )
    if identity.role is not Role.TRAINER:
        raise IdentityError("wrong_identity", f"the certificate's role is {identity.role}")
    return identity


# -- the aggregator side -----------------------------------------------------------------


class EnrollmentService:
    """Answers enrollment requests on ``fl/{federation}/enroll/+``.

    Give it a ``Bus`` of its own (a second connection of the aggregator process, entered by
    the caller): a bus has one incoming queue, and ``run`` consumes all of it.

    Args:
        bus: an entered bus; on a locked-down broker, with the aggregator's identity.
        ca: the federation CA (signs the certificates).
        registry: tokens are redeemed and enrollments recorded here.
        federation: the federation served.
        sender: the envelope sender of replies (the aggregator's id).
        valid_days: validity of the certificates issued.
        ca_dir: when given, ``ca_dir/crl.pem`` is rewritten whenever a re-enrollment
            supersedes (revokes) an agent's previous certificate.
        on_enrolled: awaited after each successful enrollment with the new identity and the
            serials it superseded, before the reply goes out (e.g. to regenerate a
            nats-server authorization that lists agents, and reload it). If it raises, the
            error is logged (``enrollment_hook_failed``) and the device still gets its
            certificate.
    """

    def __init__(
        self,
        bus: Bus,
        ca: CertificateAuthority,
        registry: Registry,
        federation: str,
        *,
        sender: str = "aggregator",
        valid_days: int = 365,
        ca_dir: Path | None = None,
        on_enrolled: Callable[[Identity, list[int]], Awaitable[None]] | None = None,
    ) -> None:
        self._bus = bus
        self._ca = ca
        self._registry = registry
        self._federation = federation
        self._sender = sender
        self._valid_days = valid_days
        self._ca_dir = ca_dir
        self._on_enrolled = on_enrolled
        self._ca_pem = ca.cert.public_bytes(_PEM)
        #: Set once the request filter is subscribed on a live broker session.
        self.ready = asyncio.Event()

    async def run(self) -> None:
        """Subscribe and answer every request until the bus closes or the task is cancelled.
        A bad request is answered (when its topic names an agent) and logged, never fatal."""
        await self._bus.subscribe(ENROLL.filter(self._federation))
        await self._bus.wait_connected()
        self.ready.set()
        log.info("enrollment_service_started", federation=self._federation)
        async for raw in self._bus.messages():
            await self.handle(raw)

    async def handle(self, raw: BusMessage) -> None:
        """Answer one raw request (what ``run`` does for each message)."""
        where = classify(raw.topic, self._federation)
        if where is None or where[0] is not ENROLL or where[1] is None:
            return  # not an enrollment request of our federation
        topic_agent = where[1]
        if not NAME_RE.match(topic_agent):
            log.warning("enrollment_refused", reason="bad_name", size=len(raw.payload))
            return  # no valid reply topic to answer on
        try:
            reply = await self._answer(raw, topic_agent)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug on one request must not stop enrollment
            log.exception("enrollment_failed_unexpectedly", agent_id=topic_agent)
            reply = EnrollReply(
                agent_id=topic_agent,
                status="error",
                reason="internal_error",
                detail="the aggregator failed to process the request; see its log",
            )
        await self._reply(reply)

    async def _answer(self, raw: BusMessage, topic_agent: str) -> EnrollReply:
        try:
            message = decode(raw.payload, topic=raw.topic, max_size=MAX_ENROLL_PAYLOAD)
        except ProtocolError as exc:
            return self._refuse(topic_agent, exc.reason, f"malformed request: {exc}", raw)
        envelope = message.envelope
        if envelope.federation != self._federation:
            return self._refuse(
                topic_agent,
                "wrong_federation",
                f"the request names federation {envelope.federation!r}",
                raw,
            )
        if envelope.kind is not Kind.ENROLL or not isinstance(message.body, EnrollRequest):
            return self._refuse(topic_agent, "malformed", f"a {envelope.kind} on {raw.topic}", raw)
        request = message.body
        if request.agent_id != topic_agent or envelope.sender != topic_agent:
            return self._refuse(
                topic_agent,
                "sender_mismatch",
                f"a request for {request.agent_id!r} from {envelope.sender!r} "
                f"on {topic_agent!r}'s topic",
                raw,
            )
        try:
            cert, superseded = await asyncio.to_thread(self._enroll, request)
        except IdentityError as exc:
            return self._refuse(topic_agent, exc.reason, _explain(exc), raw, request.token)
        if superseded and self._ca_dir is not None:
            await asyncio.to_thread(write_crl, self._ca_dir, self._registry)
        if self._on_enrolled is not None:
            try:
                await self._on_enrolled(identity_of(cert), superseded)
            except asyncio.CancelledError:
                raise
            except Exception:  # the hook's failure is the operator's to see, not the device's
                log.exception("enrollment_hook_failed", agent_id=topic_agent)
        log.info(
            "agent_enrolled",
            agent_id=topic_agent,
            serial=cert.serial_number,
            fingerprint=fingerprint(cert),
            superseded=superseded,
            token_sha256=hash_token(request.token)[:16],
        )
        return EnrollReply(
            agent_id=topic_agent, status="ok", cert=cert.public_bytes(_PEM), ca=self._ca_pem
        )

    def _enroll(self, request: EnrollRequest) -> tuple[x509.Certificate, list[int]]:
        """Check the CSR, redeem the token, sign and record (in a worker thread: SQLite may
        wait for another writer). Returns the certificate and the serials it superseded."""
        try:
            csr = x509.load_pem_x509_csr(request.csr)
        except ValueError as exc:
            raise IdentityError("bad_csr", "the CSR is not a PEM PKCS#10 request") from exc
        cert = sign_csr(
            self._ca, csr, agent_id=request.agent_id, role=Role.TRAINER, valid_days=self._valid_days
        )
        row = self._registry.agent(request.agent_id)
        if row is not None and row.role is not Role.TRAINER:
            raise IdentityError("role_conflict", f"{request.agent_id!r} is not a trainer's id")
        self._registry.redeem_token(request.token, request.agent_id)
        return cert, self._registry.record_enrollment(identity_of(cert), cert)

    def _refuse(
        self, agent_id: str, reason: str, detail: str, raw: BusMessage, token: str | None = None
    ) -> EnrollReply:
        log.warning(
            "enrollment_refused",
            reason=reason,
            agent_id=agent_id,
            detail=detail[:200],
            size=len(raw.payload),
            token_sha256=None if token is None else hash_token(token)[:16],
        )
        return EnrollReply(agent_id=agent_id, status="error", reason=reason, detail=detail[:1024])

    async def _reply(self, reply: EnrollReply) -> None:
        topic = ENROLL_REPLY.format(self._federation, reply.agent_id)
        payload = encode(reply, federation=self._federation, round=0, sender=self._sender)
        try:
            await self._bus.publish(topic, payload)
        except TransportError as exc:
            log.warning("enrollment_reply_failed", agent_id=reply.agent_id, reason=str(exc))


_EXPLANATIONS = {
    "bad_token": "the enrollment token is not valid (unknown to the aggregator)",
    "expired_token": "the enrollment token has expired; ask the operator for a new one",
    "used_token": "the enrollment token was already used; ask the operator for a new one",
    "wrong_agent": "the enrollment token was issued for another agent id",
}


def _explain(exc: IdentityError) -> str:
    return _EXPLANATIONS.get(exc.reason, str(exc))


# -- the device side ---------------------------------------------------------------------


async def enroll(
    bus_url: str,
    *,
    federation: str,
    agent_id: str,
    token: str,
    ca_fingerprint: str,
    key: PrivateKey | None = None,
    settings: BusSettings | None = None,
    tls: TlsFiles | None = None,
    timeout: float = 30.0,  # noqa: ASYNC109 - one deadline for connect and reply
    attempts: int = 3,
) -> Enrolled:
    """Enroll this device: send a CSR for a locally generated key with ``token`` and wait
    for the certificate. Returns the key, certificate and CA certificate, all checked
    (``check_issued``); writes nothing.

    The request is published up to ``attempts`` times, spread over ``timeout`` (in case the
    aggregator was not yet listening); the first reply wins. Nothing loops forever: after
    ``timeout`` seconds in all, it gives up.

    Args:
        bus_url: the broker (``mqtt://``, ``mqtts://``, ``nats://``, ``tls://``).
        settings: transport settings (default: client id ``enroll-<agent_id>``).
        tls: a ``agent.bus.url.TlsFiles`` for a TLS broker: the CA and the shared enroll
            identity on a locked-down one.
        key: the device key (default: a fresh ``new_key()``); only its CSR is sent.
        ca_fingerprint: SHA-256 of the federation CA certificate, given by the operator.

    Raises:
        IdentityError: reason ``broker_unreachable`` (no broker session within the timeout),
            ``no_reply`` (no answer within the timeout), a refusal reason from the aggregator
            (``bad_token``, ``expired_token``, ``used_token``, ``wrong_agent``, ...), or a
            failed check of the reply (``fingerprint_mismatch``, ``bad_reply``, ...).
        ConfigError: a bad broker URL or TLS files.
    """
    from agent.bus.url import bus_from_url

    pinned = normalize_fingerprint(ca_fingerprint)
    if attempts < 1 or not timeout > 0:
        raise ValueError("attempts must be >= 1 and timeout > 0")
    key = key if key is not None else new_key()
    csr = build_csr(key, agent_id=agent_id, federation=federation)
    request = EnrollRequest(agent_id=agent_id, csr=csr.public_bytes(_PEM), token=token)
    payload = encode(request, federation=federation, round=0, sender=agent_id)
    reply_topic = ENROLL_REPLY.format(federation, agent_id)
    deadline = time.monotonic() + timeout
    settings = settings or BusSettings(
        client_id=f"enroll-{agent_id}", connect_timeout=min(5.0, timeout)
    )
    bus = bus_from_url(bus_url, settings, tls=tls)  # ConfigError for a bad URL / TLS files
    await _probe(bus_url, within=deadline - time.monotonic())
    log.info(
        "enrollment_started", agent_id=agent_id, federation=federation, csr_size=len(request.csr)
    )
    async with bus:
        await bus.subscribe(reply_topic)
        try:
            await bus.wait_connected(timeout=max(0.0, deadline - time.monotonic()))
        except BusTimeoutError as exc:
            raise IdentityError(
                "broker_unreachable",
                f"the broker at {bus_url} accepted a TCP connection but no session came up "
                f"within {timeout:g} s (TLS or authentication refused? check the CA and the "
                "enroll identity files)",
            ) from exc
        reply = await _exchange(
            bus,
            reply_topic,
            payload,
            federation=federation,
            agent_id=agent_id,
            deadline=deadline,
            attempts=attempts,
        )
    if reply.status != "ok":
        reason = reply.reason or "refused"
        raise IdentityError(reason, f"enrollment refused ({reason}): {reply.detail}")
    if reply.cert is None or reply.ca is None:
        raise IdentityError("bad_reply", "the enrollment reply carries no certificate")
    try:
        cert = x509.load_pem_x509_certificate(reply.cert)
        ca_cert = x509.load_pem_x509_certificate(reply.ca)
    except ValueError as exc:
        raise IdentityError("bad_reply", "the enrollment reply's certificates are not PEM") from exc
    identity = check_issued(
        ca_cert, cert, key=key, ca_fingerprint=pinned, agent_id=agent_id, federation=federation
    )
    log.info(
        "enrollment_succeeded",
        agent_id=agent_id,
        serial=cert.serial_number,
        fingerprint=fingerprint(cert),
    )
    return Enrolled(key=key, cert=cert, ca_cert=ca_cert, identity=identity)


async def _probe(bus_url: str, *, within: float) -> None:
    """Fail fast with ``broker_unreachable`` when nothing listens at the broker's address
    (the bus itself would retry with backoff until the timeout)."""
    from agent.bus.url import parse_broker_url

    address = parse_broker_url(bus_url)
    try:
        async with asyncio.timeout(max(0.0, within)):
            _, writer = await asyncio.open_connection(address.host, address.port)
    except TimeoutError as exc:
        raise IdentityError(
            "broker_unreachable",
            f"cannot reach the broker at {bus_url}: no TCP connection within {within:.3g} s",
        ) from exc
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
        raise IdentityError(
            "broker_unreachable", f"cannot reach the broker at {bus_url}: {why}"
        ) from exc
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _exchange(
    bus: Bus,
    reply_topic: str,
    payload: bytes,
    *,
    federation: str,
    agent_id: str,
    deadline: float,
    attempts: int,
) -> EnrollReply:
    """Publish the request (re-sent up to ``attempts`` times) and return the first reply."""
    budget = max(0.0, deadline - time.monotonic())
    interval = budget / attempts

    async def send() -> None:
        for attempt in range(attempts):
            try:
                await bus.publish(ENROLL.format(federation, agent_id), payload)
            except NotConnectedError as exc:
                log.warning("enrollment_send_failed", attempt=attempt, reason=str(exc))
            await asyncio.sleep(interval)

    try:
        async with asyncio.timeout(budget), asyncio.TaskGroup() as tg:
            sender = tg.create_task(send(), name=f"enroll-send-{agent_id}")
            try:
                async for raw in bus.messages():
                    reply = _reply_of(raw, reply_topic, federation=federation, agent_id=agent_id)
                    if reply is not None:
                        return reply
            finally:
                sender.cancel()
    except TimeoutError as exc:
        raise IdentityError(
            "no_reply",
            f"no answer on {reply_topic} within {budget:.3g} s: is the aggregator's enrollment "
            f"service running for federation {federation!r} on this broker?",
        ) from exc
    raise IdentityError("broker_unreachable", "the bus closed before the aggregator answered")


def _reply_of(
    raw: BusMessage, reply_topic: str, *, federation: str, agent_id: str
) -> EnrollReply | None:
    if raw.topic != reply_topic:
        return None
    try:
        message = decode(raw.payload, topic=raw.topic, max_size=MAX_ENROLL_PAYLOAD)
    except ProtocolError as exc:
        log.warning("enrollment_reply_dropped", reason=exc.reason, size=len(raw.payload))
        return None
    body = message.body
    if (
        message.envelope.federation != federation
        or not isinstance(body, EnrollReply)
        or body.agent_id != agent_id
    ):
        log.warning("enrollment_reply_dropped", reason="not_for_us", size=len(raw.payload))
        return None
    return body
