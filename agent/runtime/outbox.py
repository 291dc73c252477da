"""Sending: build an envelope around a body and publish it on a topic of the table.

A body of more than ``chunk_size`` bulk bytes goes as a manifest and its chunks
(``agent.messages.chunks``) on the same topic, never retained: a late joiner gets the current
model on its inbox (``admission``), on MQTT and NATS alike. The manifest goes first; the
chunks follow with up to ``window`` publishes in flight (the receiver takes any order).
"""

from __future__ import annotations

import asyncio
from functools import partial

import structlog
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from agent.bus.base import Bus
from agent.errors import PublishRefusedError, SealError, TransportError
from agent.messages import chunks
from agent.messages.bodies import KIND_OF, Body
from agent.messages.codec import encode, sealed_kind
from agent.messages.kinds import Kind
from agent.messages.sealing import SEALED_KINDS
from agent.messages.signing import Signer
from agent.messages.topics import TopicSpec
from agent.runtime.credits import Credits
from agent.runtime.metrics import Metrics
from agent.runtime.tasks import task_group

#: Kinds that carry a model-sized tensor.
BULKY = frozenset({Kind.MODEL_PARA, Kind.MODEL_UPDATE, Kind.MASKED_INPUT, Kind.PEER_MODEL})
#: Chunk publishes in flight per chunked message.
WINDOW = 8

log = structlog.get_logger(__name__)


class Outbox:
    """Publishes bodies as ``sender`` in ``federation`` (one per role instance).

    With a ``signer`` every message is signed; ``seal_to`` (the aggregator's key, learnt on
    admission) seals the bodies of ``SEALED_KINDS``. While signing without a sealing key, a
    body that must be sealed is not sent at all (``SealError``): it never goes out in the clear.
    Sent messages and bytes are counted in ``metrics`` (the role's; default: its own).
    A body of more than ``chunk_size`` bulk bytes is chunked (None: never; the bus then
    refuses what exceeds its limit).
    """

    def __init__(
        self,
        bus: Bus,
        *,
        federation: str,
        sender: str,
        signer: Signer | None = None,
        metrics: Metrics | None = None,
        chunk_size: int | None = None,
    ) -> None:
        self._bus = bus
        self.chunk_size = chunk_size
        #: with it, a chunked send waits for the receiver's chunk_acks (``runtime.credits``)
        self.credits: Credits | None = None
        self.metrics = Metrics() if metrics is None else metrics
        self.federation = federation
        self.sender = sender
        self.signer = signer
        self.seal_to: X25519PublicKey | None = None

    async def send(
        self,
        spec: TopicSpec,
        body: Body,
        *,
        round: int,
        agent_id: str | None = None,
        peer: str = "+",
    ) -> int:
        """Encode ``body`` and publish it on ``spec`` (retained if the spec says so).

        Returns the payload size in bytes.

        Raises:
            TransportError: from the bus; ``PublishRefusedError`` when the broker refused it
                (logged as ``publish_refused`` and counted in ``publishes_refused``).
            SealError: a body that must be sealed while no sealing key is known.
        """
        topic = spec.format(self.federation, agent_id, peer=peer)  # peer: topics.PEER's level
        kind = KIND_OF[type(body)]
        if self.signer is not None and self.seal_to is None and kind in SEALED_KINDS:
            raise SealError(f"no sealing key for a {kind} yet; not sent")
        limit = self.chunk_size
        if limit is not None and kind in BULKY and chunks.bulk_size(body) > limit:
            return await self._send_chunked(topic, body, round=round, chunk_size=limit)
        build = partial(
            encode,
            body,
            federation=self.federation,
            round=round,
            sender=self.sender,
            signer=self.signer,
            seal_to=self.seal_to,
        )
        # Encoding, sealing and signing a model hashes and encrypts megabytes: off the loop.
        payload = await asyncio.to_thread(build) if kind in BULKY else build()
        if limit is not None and len(payload) > limit + chunks.ENVELOPE_MARGIN:
            # a relay map or share list of a huge cohort: chunked as a whole msgpack body
            return await self._send_chunked(topic, body, round=round, chunk_size=limit)
        try:
            await self._bus.publish(topic, payload, retain=spec.retained)
        except PublishRefusedError as exc:
            # Not a flaky network: this agent's broker rights are wrong. Loud, and counted.
            self.metrics.publishes_refused.labels(kind).inc()
            log.error("publish_refused", topic=topic, kind=kind, code=exc.code)  # noqa: TRY400
            raise
        self._count(kind, len(payload))
        log.debug("message_sent", topic=topic, kind=type(body).__name__, size=len(payload))
        return len(payload)

    async def _send_chunked(self, topic: str, body: Body, *, round: int, chunk_size: int) -> int:
        """A manifest, then its chunks (at most ``WINDOW`` in flight); the bytes sent."""
        sealed = self.seal_to is not None and sealed_kind(body) in SEALED_KINDS
        manifest, frames = await asyncio.to_thread(chunks.build, body, chunk_size, sealed=sealed)
        payload = encode(
            manifest,
            federation=self.federation,
            round=round,
            sender=self.sender,
            signer=self.signer,
            seal_to=self.seal_to,
        )
        credits = self.credits
        if credits is not None:
            credits.open(manifest.transfer)
        gate = asyncio.Semaphore(WINDOW)

        async def one(data: bytes) -> None:
            try:
                await self._bus.publish(topic, data, retain=False)
            finally:
                gate.release()

        size = len(payload)
        try:
            await self._bus.publish(topic, payload, retain=False)
            async with task_group() as tg:
                for index, data in enumerate(frames):
                    size += len(data)
                    if credits is not None:
                        await credits.before(manifest.transfer, index)
                    await gate.acquire()
                    tg.create_task(one(data))
        finally:
            if credits is not None:
                credits.close(manifest.transfer)
        self._count(KIND_OF[type(body)], size)
        log.debug("message_sent", topic=topic, kind=type(body).__name__, size=size)
        return size

    def _count(self, kind: Kind, size: int) -> None:
        self.metrics.messages_sent.labels(str(kind)).inc()
        self.metrics.bytes_sent.labels(str(kind)).inc(size)

    async def try_send(
        self,
        spec: TopicSpec,
        body: Body,
        *,
        round: int,
        agent_id: str | None = None,
        peer: str = "+",
    ) -> int | None:
        """``send``, but a ``TransportError`` (the broker unreachable for longer than the
        publish timeout) is logged as ``message_not_sent`` and returns None: for the rounds,
        an unsent message is a dropout, not a reason to stop."""
        try:
            return await self.send(spec, body, round=round, agent_id=agent_id, peer=peer)
        except (TransportError, SealError) as exc:
            log.warning(
                "message_not_sent",
                topic=spec.name,
                kind=type(body).__name__,
                to=agent_id,
                error=str(exc),
            )
            return None
