"""The aggregator side of enrollment (``agent.identity.enrollment``): answer each device's
request with a certificate or the reason why not.

Requests go through the one receive pipeline, ``agent.runtime.listeners.Dispatcher``: it
checks size, envelope, federation, topic/kind and topic/sender and drops a failing message
with a ``message_dropped`` line naming the reason; the service then answers that reason to
the device (unless the request is a re-sent duplicate, or its topic names no valid agent id
to answer on). The one listener, for ``Kind.ENROLL``, checks what is enrollment's own: the
request names its topic's agent id, the CSR, the token, the registry's roles.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.bus.base import Bus, BusMessage
from agent.errors import DuplicateMessageError, IdentityError, ProtocolError, TransportError
from agent.identity.batch import EnrollBatcher, Pending, enroll_batch
from agent.identity.ca import CertificateAuthority, sign_csr
from agent.identity.ca_dir import write_crl
from agent.identity.certificates import NAME_RE, fingerprint, identity_of
from agent.identity.enrollment import MAX_ENROLL_PAYLOAD
from agent.identity.registry import Registry
from agent.identity.tokens import hash_token
from agent.messages.bodies import EnrollReply, EnrollRequest
from agent.messages.codec import decode_envelope, encode
from agent.messages.envelope import Message
from agent.messages.kinds import Kind
from agent.messages.signing import Signer
from agent.messages.topics import ENROLL, ENROLL_REPLY, classify
from agent.role import Identity, Role
from agent.runtime.listeners import Dispatcher, ListenerRegistry, RoundPolicy
from agent.runtime.renewal import RenewalService

log = structlog.get_logger(__name__)

_PEM = serialization.Encoding.PEM
#: Requests answered at once (each waits for its batch, then publishes its reply).
MAX_IN_FLIGHT = 512
#: Hook awaited after each successful enrollment: the new identity, the serials superseded.
EnrolledHook = Callable[[Identity, list[int]], Awaitable[None]]


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
        signer: signs every reply (the aggregator's, or the CA's enroll identity): a device
            that holds the CA certificate can tell a reply of ours from junk on its topic.
            Every reply also names the request it answers (``EnrollReply.request``).
        renewal: when given, this service's connection also carries certificate renewals
            (``renew/+``), which it hands to ``renewal`` (``agent.runtime.renewal``).
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
        on_enrolled: EnrolledHook | None = None,
        signer: Signer | None = None,
        renewal: RenewalService | None = None,
    ) -> None:
        self._bus = bus
        self._ca = ca
        self._registry = registry
        self._federation = federation
        self._sender = sender
        self._valid_days = valid_days
        self._ca_dir = ca_dir
        self._on_enrolled = on_enrolled
        self._signer = signer
        self._renewal = renewal
        self._ca_pem = ca.cert.public_bytes(_PEM)
        listeners = ListenerRegistry()
        listeners.register(Kind.ENROLL, self._on_request, rounds=RoundPolicy.ANY)
        self._dispatcher = Dispatcher(
            federation=federation,
            registry=listeners,
            current_round=lambda: 0,
            max_payload=MAX_ENROLL_PAYLOAD,
            on_drop=self._on_drop,
        )
        #: Set once the request filter is subscribed on a live broker session.
        self.ready = asyncio.Event()
        self._batcher = EnrollBatcher(registry, self._sign)
        self._tasks: asyncio.TaskGroup | None = None
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)

    def sign_with(self, signer: Signer) -> None:
        """Sign replies (and renewal replies) with ``signer`` from now on (a renewed
        aggregator certificate, ``runtime.own_renewal``)."""
        self._signer = signer
        if self._renewal is not None:
            self._renewal.sign_with(signer)

    async def run(self) -> None:
        """Subscribe and answer every request until the bus closes or the task is cancelled.
        A bad request is answered (when its topic names an agent) and logged, never fatal."""
        await self._bus.subscribe(ENROLL.filter(self._federation))
        renewal = self._renewal
        if renewal is not None:
            await self._bus.subscribe(renewal.filter)
        await self._bus.wait_connected()
        self.ready.set()
        log.info("enrollment_service_started", federation=self._federation)
        # Requests are answered concurrently (at most MAX_IN_FLIGHT), so the ones that
        # arrive together are redeemed, signed and recorded in one batch (identity.batch).
        try:
            async with asyncio.TaskGroup() as tg:
                self._tasks = tg
                batching = tg.create_task(self._batcher.run(), name="enrollment-batcher")
                async for raw in self._bus.messages():
                    if renewal is not None and renewal.serves(raw.topic):
                        await renewal.dispatcher.dispatch(raw)
                    else:
                        await self._dispatcher.dispatch(raw)
                batching.cancel()  # the bus closed: requests still waiting for a batch end
        finally:
            self._tasks = None

    async def _on_request(self, message: Message[Any]) -> None:
        """The ``Kind.ENROLL`` listener: the Dispatcher checked that the envelope's sender is
        the topic's agent id. Answered in a task of ``run`` (once ``MAX_IN_FLIGHT`` are, the
        receive loop waits for a free place)."""
        if self._tasks is None:  # not under run(): answer here
            await self._serve_one(message)
            return
        await self._in_flight.acquire()
        self._tasks.create_task(self._serve(message), name=f"enroll-{message.sender}")

    async def _serve(self, message: Message[Any]) -> None:
        try:
            await self._serve_one(message)
        finally:
            self._in_flight.release()

    async def _serve_one(self, message: Message[Any]) -> None:
        agent_id = message.sender
        try:
            reply = await self._answer(message.body, agent_id)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug on one request must not stop enrollment
            log.exception("enrollment_failed_unexpectedly", agent_id=agent_id)
            reply = EnrollReply(
                agent_id=agent_id,
                status="error",
                reason="internal_error",
                detail="the aggregator failed to process the request; see its log",
            )
        await self._reply(msgspec.structs.replace(reply, request=message.envelope.message_id))

    async def _on_drop(self, raw: BusMessage, reason: str, detail: str) -> None:
        """Tell the device why the Dispatcher dropped its request (it already logged it)."""
        where = classify(raw.topic, self._federation)
        if where is None or where[0] is not ENROLL or where[1] is None:
            return  # not an enrollment topic of ours: no one to answer
        if not NAME_RE.match(where[1]) or reason == DuplicateMessageError.reason:
            return  # no valid reply topic; or a re-sent request, answered the first time
        try:  # answer the request by its id when its envelope can be read at all
            request = decode_envelope(raw.payload, max_size=MAX_ENROLL_PAYLOAD)[0].message_id
        except ProtocolError:
            request = b""
        await self._reply(
            EnrollReply(
                agent_id=where[1],
                status="error",
                reason=reason,
                detail=f"the aggregator dropped the request: {detail}"[:1024],
                request=request,
            )
        )

    async def _answer(self, request: EnrollRequest, agent_id: str) -> EnrollReply:
        if request.agent_id != agent_id:
            return self._refuse(
                agent_id,
                "sender_mismatch",
                f"a request for {request.agent_id!r} on {agent_id!r}'s topic",
            )
        if request.ca_fingerprint and request.ca_fingerprint != self._ca.fingerprint:
            return self._refuse(  # before the token is redeemed or anything signed
                agent_id,
                "fingerprint_mismatch",
                "the CA fingerprint the device pinned is not this federation's CA: check "
                "--ca-fingerprint (the token was not used)",
            )
        try:
            cert, superseded = await self._batcher.enroll(_pending(request))
        except IdentityError as exc:
            return self._refuse(agent_id, exc.reason, _explain(exc), request.token)
        if superseded and self._ca_dir is not None:
            await asyncio.to_thread(write_crl, self._ca_dir, self._registry)
        if self._on_enrolled is not None:
            try:
                await self._on_enrolled(identity_of(cert), superseded)
            except asyncio.CancelledError:
                raise
            except Exception:  # the hook's failure is the operator's to see, not the device's
                log.exception("enrollment_hook_failed", agent_id=agent_id)
        log.info(
            "agent_enrolled",
            agent_id=agent_id,
            serial=cert.serial_number,
            fingerprint=fingerprint(cert),
            superseded=superseded,
            token_sha256=hash_token(request.token)[:16],
        )
        return EnrollReply(
            agent_id=agent_id, status="ok", cert=cert.public_bytes(_PEM), ca=self._ca_pem
        )

    def _enroll(self, request: EnrollRequest) -> tuple[x509.Certificate, list[int]]:
        """One request alone, as a batch of one (``identity.batch.enroll_batch``): the
        checks, the token redeemed, then signed and recorded. Returns the certificate and
        the serials it superseded.

        Raises:
            IdentityError: the request was refused.
        """
        (outcome,) = enroll_batch(self._registry, [_pending(request)], self._sign)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def _sign(self, request: Pending) -> x509.Certificate:
        return sign_csr(
            self._ca,
            request.csr,
            agent_id=request.agent_id,
            role=Role.TRAINER,
            valid_days=self._valid_days,
        )

    def _refuse(
        self, agent_id: str, reason: str, detail: str, token: str | None = None
    ) -> EnrollReply:
        log.warning(
            "enrollment_refused",
            reason=reason,
            agent_id=agent_id,
            detail=detail[:200],
            token_sha256=None if token is None else hash_token(token)[:16],
        )
        return EnrollReply(agent_id=agent_id, status="error", reason=reason, detail=detail[:1024])

    async def _reply(self, reply: EnrollReply) -> None:
        topic = ENROLL_REPLY.format(self._federation, reply.agent_id)
        payload = encode(
            reply, federation=self._federation, round=0, sender=self._sender, signer=self._signer
        )
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


def _pending(request: EnrollRequest) -> Pending:
    """``request`` with its CSR parsed.

    Raises:
        IdentityError: reason ``bad_csr``: not a PEM PKCS#10 request.
    """
    try:
        csr = x509.load_pem_x509_csr(request.csr)
    except Exception as exc:
        raise IdentityError("bad_csr", "the CSR is not a PEM PKCS#10 request") from exc
    return Pending(request.agent_id, request.token, csr)


def _explain(exc: IdentityError) -> str:
    return _EXPLANATIONS.get(exc.reason, str(exc))
