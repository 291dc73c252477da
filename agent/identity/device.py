"""The device side of enrollment (``agent.identity.enrollment``): ask the aggregator for a
certificate over the bus, and check any certificate the device is given.

``enroll`` writes nothing; ``agent.identity.install`` puts what it returns in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.bus.base import Bus, BusMessage, BusSettings
from agent.errors import BusTimeoutError, IdentityError, NotConnectedError, ProtocolError
from agent.identity.ca import build_csr, new_key
from agent.identity.certificates import fingerprint, verify_issued
from agent.identity.enrollment import MAX_ENROLL_PAYLOAD
from agent.identity.pem import PrivateKey
from agent.messages.bodies import EnrollReply, EnrollRequest
from agent.messages.codec import decode, decode_envelope, encode
from agent.messages.topics import ENROLL, ENROLL_REPLY
from agent.role import Identity, Role

if TYPE_CHECKING:
    from agent.bus.url import TlsFiles

log = structlog.get_logger(__name__)

_PEM = serialization.Encoding.PEM
_FINGERPRINT_RE = re.compile(r"^[0-9a-f]{64}$")


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
    request = EnrollRequest(  # the pin goes along: a wrong one is refused before the token
        agent_id=agent_id, csr=csr.public_bytes(_PEM), token=token, ca_fingerprint=pinned
    )
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
    (the bus itself would retry with backoff until the timeout); with several servers (a
    NATS cluster), when none of them does (``within`` each)."""
    from agent.bus.url import parse_broker_urls

    failure = IdentityError("broker_unreachable", f"no broker in {bus_url}")
    for address in parse_broker_urls(bus_url):
        where = f"{address.host}:{address.port}"
        try:
            async with asyncio.timeout(max(0.0, within)):
                _, writer = await asyncio.open_connection(address.host, address.port)
        except TimeoutError:
            failure = IdentityError(
                "broker_unreachable",
                f"cannot reach the broker at {where}: no TCP connection within {within:.3g} s",
            )
            continue
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
            failure = IdentityError(
                "broker_unreachable", f"cannot reach the broker at {where}: {why}"
            )
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
    raise failure


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
    """Publish the request (re-sent up to ``attempts`` times) and return the first reply to
    it (``EnrollReply.request`` is its message id; other replies are dropped and logged)."""
    budget = max(0.0, deadline - time.monotonic())
    interval = budget / attempts
    request_id = decode_envelope(payload)[0].message_id  # every attempt re-sends these bytes

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
                    reply = _reply_of(
                        raw,
                        reply_topic,
                        federation=federation,
                        agent_id=agent_id,
                        request_id=request_id,
                    )
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
    raw: BusMessage, reply_topic: str, *, federation: str, agent_id: str, request_id: bytes
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
    if body.request != request_id:  # the answer to someone else's request on our topic
        log.warning("enrollment_reply_dropped", reason="not_our_request", size=len(raw.payload))
        return None
    return body
