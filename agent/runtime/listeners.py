"""Listeners keyed by message kind, and the one dispatch point every message goes through.

A role registers one handler per kind it accepts, with a round policy. ``Dispatcher.dispatch``
then runs, for each incoming bus message: size limit → decode the envelope → federation →
topic/kind and topic/sender agreement → (identities on) signature, certificate, timestamp,
role and revocation → (aggregator) open the sealed body → decode the body → round guard →
duplicate check → the handler. A message failing any check is dropped with one
``message_dropped`` log line naming the reason; a handler that raises is logged as
``handler_failed``. Neither stops the receive loop.

A chunked message (``agent.messages.chunks``) is a manifest, which goes through every check
above (the kind it carries stands in for its own kind at the topic, sealing, listener and
round checks) and opens a transfer in ``reassembly``, and chunk frames, which the reassembly
checks against it; once complete, the rebuilt body is validated, the round checked again, and
its listener called with the manifest's envelope (carrying the inner kind).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from agent.bus.base import Bus, BusMessage
from agent.errors import (
    DecodeError,
    DuplicateMessageError,
    ProtocolError,
    SealError,
    SenderMismatchError,
    StaleRoundError,
    WrongFederationError,
    WrongTopicError,
)
from agent.messages import chunks
from agent.messages.bodies import Manifest
from agent.messages.codec import decode_body, decode_envelope
from agent.messages.envelope import Message
from agent.messages.kinds import TIMELESS_KINDS, Kind
from agent.messages.sealing import SEALED_KINDS, open_sealed, seal_info
from agent.messages.topics import classify
from agent.role import Role
from agent.runtime.assembly import rebuild
from agent.runtime.chunk_lane import ChunkLane, Keeping
from agent.runtime.dedupe import SeenIds
from agent.runtime.fairness import FairQueue
from agent.runtime.handlers import Handler as Handler
from agent.runtime.handlers import Listener as Listener
from agent.runtime.handlers import ListenerRegistry as ListenerRegistry
from agent.runtime.handlers import RoundPolicy as RoundPolicy
from agent.runtime.handlers import Security as Security
from agent.runtime.handlers import verify_sender as verify_sender
from agent.runtime.metrics import Metrics
from agent.runtime.reassembly import Limits, Reassembly, Transfer
from agent.runtime.tasks import task_group

log = structlog.get_logger(__name__)

#: Awaited with (transfer, chunks kept) when a transfer's sender must be told a new grant
#: (``Transfer.grant``, from the shared in-flight budget, ``runtime.credit_pool``): the
#: aggregator acknowledges to the sender (``runtime.credits``).
ChunkHook = Callable[[Transfer, int], Awaitable[None]]
#: Awaited for each dropped message: the raw message, the drop reason and its detail.
DropHook = Callable[[BusMessage, str, str], Awaitable[None]]
#: Payloads at least this large are checked and decoded in a worker thread.
OFFLOAD_BYTES = 64 * 1024


class Dispatcher:
    """Validates incoming messages and hands them to their listener.

    Args:
        federation: the only federation whose messages are accepted.
        registry: the listeners.
        current_round: returns the role's current round, read at each message.
        max_payload: larger payloads are dropped as ``oversized``.
        seen_capacity: how many message ids to remember for duplicate detection.
        security: signature and sealing checks (None: identities off).
        on_drop: awaited after each drop is logged, e.g. to tell an unsigned sender why (the
            enrollment service answers the device); it must not raise. None: drops are only
            logged.
        metrics: counts accepted and dropped messages (the role's; default: its own).
        fairness: per-sender rate limits and queue shares applied in ``run`` before decode
            (``agent.runtime.fairness``; the aggregator's); None: the bus's order.
        seen: called with the sender of every message whose signature verified (identities
            on), e.g. ``LivenessTracker.touch``.
        transfer: the reassembly bounds for chunked messages (default: ``Limits()``).
        on_chunk: awaited as grants change (see ``ChunkHook``); given, the senders' chunks in
            flight are granted from ``transfer.in_flight`` bytes shared by all of them
            (``runtime.credit_pool``); None: no acknowledgements, no flow control.
    """

    def __init__(
        self,
        *,
        federation: str,
        registry: ListenerRegistry,
        current_round: Callable[[], int],
        max_payload: int,
        seen_capacity: int = 8192,
        security: Security | None = None,
        on_drop: DropHook | None = None,
        metrics: Metrics | None = None,
        fairness: FairQueue | None = None,
        seen: Callable[[str], None] | None = None,
        transfer: Limits | None = None,
        on_chunk: ChunkHook | None = None,
    ) -> None:
        self._on_chunk = on_chunk
        #: the hand-off to the receive loop's tasks, while ``run`` is active
        self._lane: ChunkLane | None = None
        self._federation = federation
        self.fairness = fairness
        self._seen_sender = seen or (lambda _: None)
        self.reassembly = Reassembly(
            transfer, on_drop=self._count_drop, flow_control=on_chunk is not None
        )
        self._on_drop = on_drop
        self.metrics = Metrics() if metrics is None else metrics
        self.security = security
        self._registry = registry
        self._current_round = current_round
        self._max_payload = max_payload
        self._seen = SeenIds(seen_capacity)
        self.dropped: dict[str, int] = {}

    def accept(self, raw: BusMessage) -> tuple[Listener, Message[Any]]:
        """Run every check on ``raw``; return the listener and the decoded message.

        Raises:
            ProtocolError: (a subclass naming the reason) when the message must be dropped.
        """
        envelope, signed = decode_envelope(raw.payload, max_size=self._max_payload)
        if envelope.federation != self._federation:
            raise WrongFederationError(f"federation {envelope.federation!r}")
        where = classify(raw.topic, self._federation)
        if where is None or envelope.kind not in where[0].kinds:
            raise WrongTopicError(f"{envelope.kind!s} does not travel on {raw.topic}")
        spec, topic_agent = where
        if (
            spec.publisher is Role.TRAINER
            and topic_agent is not None
            and topic_agent != envelope.sender
        ):
            raise SenderMismatchError(f"sender {envelope.sender!r} on {raw.topic}")
        security = self.security
        identity = None
        if security is not None:
            identity = verify_sender(security.verifier, signed, envelope, spec)
            self._seen_sender(envelope.sender)  # any signed message is a sign of life
        data = envelope.body
        unseal_key = security.unseal_key if security is not None else None
        if envelope.sealed:
            if unseal_key is None:
                raise SealError(f"a sealed {envelope.kind} body this agent cannot open")
            info = seal_info(
                federation=envelope.federation,
                round=envelope.round,
                sender=envelope.sender,
                kind=envelope.kind,
            )
            data = open_sealed(data, unseal_key, info)
        elif unseal_key is not None and envelope.kind in SEALED_KINDS:
            raise SealError(f"a {envelope.kind} body must be sealed")
        body = decode_body(envelope.kind, data)
        kind = envelope.kind
        if isinstance(body, Manifest):
            kind = body.kind
            if kind is Kind.MANIFEST or kind not in spec.kinds:
                raise WrongTopicError(f"a manifest of {kind!s} does not travel on {raw.topic}")
            if unseal_key is not None and kind in SEALED_KINDS and not envelope.sealed:
                raise SealError(f"the manifest of a {kind} must be sealed")
        message: Message[Any] = Message(envelope, body, raw.topic, identity)
        listener = self._registry.get(kind)
        self._check_round(listener, envelope.round)
        if envelope.kind not in TIMELESS_KINDS and not self._seen.add(envelope.message_id):
            raise DuplicateMessageError(f"message id {envelope.message_id.hex()}")
        return listener, message

    def _check_round(self, listener: Listener, round_: int) -> None:
        current = self._current_round()
        if (listener.rounds is RoundPolicy.CURRENT and round_ != current) or (
            listener.rounds is RoundPolicy.NOT_STALE and round_ < current
        ):
            raise StaleRoundError(f"round {round_}, current round {current}")

    async def dispatch(self, raw: BusMessage) -> bool:
        """Check ``raw`` and run its handler. Returns True when a handler ran cleanly (for a
        manifest or a chunk: when it was kept)."""
        self.reassembly.expire()
        await self._grant()  # the credit an expired transfer held goes to the others
        if chunks.is_chunk(raw.payload):
            return await self._chunk(raw)
        try:
            if len(raw.payload) >= OFFLOAD_BYTES:
                # Verifying, opening and decoding a model-sized payload hashes and decrypts
                # megabytes: off the event loop (one message at a time, as run() awaits).
                listener, message = await asyncio.to_thread(self.accept, raw)
            else:
                listener, message = self.accept(raw)
        except ProtocolError as exc:
            self._drop(raw, exc.reason, str(exc))
            if self._on_drop is not None:
                await self._on_drop(raw, exc.reason, str(exc))
            return False
        except Exception as exc:  # a decoder bug must not end the receive loop either
            log.exception("decode_failed_unexpectedly", topic=raw.topic)
            self._drop(raw, DecodeError.reason, repr(exc))
            if self._on_drop is not None:
                await self._on_drop(raw, DecodeError.reason, "the message could not be decoded")
            return False
        if isinstance(message.body, Manifest):
            try:
                transfer = self.reassembly.begin(
                    raw.topic, message.envelope, message.body, message.identity
                )
            except ProtocolError as exc:
                self._drop(raw, exc.reason, str(exc))
                return False
            transfer.sink = listener.sink(transfer)  # its chunks taken as they arrive
            self.metrics.bytes_received.labels(str(Kind.MANIFEST)).inc(len(raw.payload))
            await self._grant()
            return True
        self.metrics.messages_received.labels(str(message.kind)).inc()
        self.metrics.bytes_received.labels(str(message.kind)).inc(len(raw.payload))
        return await self._handle(listener, message)

    async def _chunk(self, raw: BusMessage) -> bool:
        """Keep one chunk: while ``run`` is active, checked here, then hashed and kept by the
        lane's thread and settled there (``Keeping``); otherwise all in a worker thread, and a
        complete transfer rebuilt and handled at once."""
        lane = self._lane
        try:
            if lane is not None:
                pending = self.reassembly.check(raw.topic, raw.payload)
                if pending is not None:
                    await lane.keep(pending)
                return True
            transfer = await asyncio.to_thread(self.reassembly.add, raw.topic, raw.payload)
        except ProtocolError as exc:
            self._drop(raw, exc.reason, str(exc))
            return False
        except Exception as exc:  # a decoder bug must not end the receive loop either
            log.exception("decode_failed_unexpectedly", topic=raw.topic)
            self._drop(raw, DecodeError.reason, repr(exc))
            return False
        return transfer is None or await self._kept(transfer, len(raw.payload))

    def _keeping(self) -> Keeping:
        return Keeping(self.reassembly, kept=self._kept, drop=self._drop_at)

    async def _kept(self, transfer: Transfer, size: int) -> bool:
        """A chunk of ``size`` bytes kept: grants, and a complete transfer rebuilt and handled
        (queued in the lane while ``run`` is active)."""
        self.metrics.bytes_received.labels("chunk").inc(size)
        await self._grant()
        if transfer.missing:
            return True
        if self._lane is not None:
            await self._lane.complete(transfer)
            return True
        return await self._finish(transfer)

    async def _grant(self) -> None:
        """Tell each sender whose grant grew (``Reassembly.due``), from the lane while
        ``run`` is active."""
        if self._on_chunk is None:
            return
        for transfer in self.reassembly.due():
            kept = len(transfer.received) - transfer.missing
            if self._lane is not None:
                self._lane.ack(transfer, kept)
            else:
                await self._on_chunk(transfer, kept)

    async def _finish(self, transfer: Transfer) -> bool:
        """Rebuild a complete transfer's message and run its handler."""
        size = transfer.manifest.total_size
        try:
            listener, message = await asyncio.to_thread(self._complete, transfer)
        except ProtocolError as exc:
            self._drop_at(transfer.topic, size, exc.reason, str(exc))
            return False
        except Exception as exc:  # a decoder bug must not end the receive loop either
            log.exception("decode_failed_unexpectedly", topic=transfer.topic)
            self._drop_at(transfer.topic, size, DecodeError.reason, repr(exc))
            return False
        self.metrics.messages_received.labels(str(message.kind)).inc()
        return await self._handle(listener, message)

    def _complete(self, transfer: Transfer) -> tuple[Listener, Message[Any]]:
        """The message a complete transfer carries, validated, for its listener."""
        message = rebuild(transfer)
        listener = self._registry.get(message.kind)
        self._check_round(listener, message.round)
        return listener, message

    async def _handle(self, listener: Listener, message: Message[Any]) -> bool:
        # Every line a handler logs (and every task it starts) carries the message's context.
        with structlog.contextvars.bound_contextvars(
            round=message.round, msg_kind=str(message.kind), peer=message.sender
        ):
            try:
                await listener.handler(message)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("handler_failed")
                return False
        return True

    def _count_drop(self, topic: str, reason: str, detail: str) -> None:
        del topic, detail  # the reassembly logged it
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        self.metrics.messages_dropped.labels(reason).inc()

    def _drop(self, raw: BusMessage, reason: str, detail: str) -> None:
        self._drop_at(raw.topic, len(raw.payload), reason, detail)

    def _drop_at(self, topic: str, size: int, reason: str, detail: str) -> None:
        self._count_drop(topic, reason, detail)
        log.warning("message_dropped", reason=reason, topic=topic, size=size, detail=detail[:200])

    async def run(self, bus: Bus) -> None:
        """The receive loop: dispatch every message from ``bus`` until it is closed."""
        messages = bus.messages()
        if self.fairness is not None:
            messages = self.fairness.through(messages)
        try:
            async with task_group() as tg:
                lane = self._lane = ChunkLane(
                    tg, send_ack=self._on_chunk, finish=self._finish, keeping=self._keeping()
                )
                try:
                    async for raw in messages:
                        await self.dispatch(raw)
                finally:
                    lane.stop()
        finally:
            self._lane = None
            self.reassembly.close()
