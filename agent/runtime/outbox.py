"""Sending: build an envelope around a body and publish it on a topic of the table."""

from __future__ import annotations

import asyncio
from functools import partial

import structlog
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from agent.bus.base import Bus
from agent.errors import PublishRefusedError, SealError, TransportError
from agent.messages.bodies import KIND_OF, Body
from agent.messages.codec import encode
from agent.messages.kinds import Kind
from agent.messages.sealing import SEALED_KINDS
from agent.messages.signing import Signer
from agent.messages.topics import TopicSpec
from agent.runtime.metrics import Metrics

#: Kinds that carry a model-sized tensor.
BULKY = frozenset({Kind.MODEL_PARA, Kind.MODEL_UPDATE, Kind.MASKED_INPUT})

log = structlog.get_logger(__name__)


class Outbox:
    """Publishes bodies as ``sender`` in ``federation`` (one per role instance).

    With a ``signer`` every message is signed; ``seal_to`` (the aggregator's key, learnt on
    admission) seals the bodies of ``SEALED_KINDS``. While signing without a sealing key, a
    body that must be sealed is not sent at all (``SealError``): it never goes out in the clear.
    Sent messages and bytes are counted in ``metrics`` (the role's; default: its own).
    """

    def __init__(
        self,
        bus: Bus,
        *,
        federation: str,
        sender: str,
        signer: Signer | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._bus = bus
        self.metrics = Metrics() if metrics is None else metrics
        self.federation = federation
        self.sender = sender
        self.signer = signer
        self.seal_to: X25519PublicKey | None = None

    async def send(
        self, spec: TopicSpec, body: Body, *, round: int, agent_id: str | None = None
    ) -> int:
        """Encode ``body`` and publish it on ``spec`` (retained if the spec says so).

        Returns the payload size in bytes.

        Raises:
            TransportError: from the bus; ``PublishRefusedError`` when the broker refused it
                (logged as ``publish_refused`` and counted in ``publishes_refused``).
            SealError: a body that must be sealed while no sealing key is known.
        """
        topic = spec.format(self.federation, agent_id)
        if self.signer is not None and self.seal_to is None and KIND_OF[type(body)] in SEALED_KINDS:
            raise SealError(f"no sealing key for a {KIND_OF[type(body)]} yet; not sent")
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
        payload = await asyncio.to_thread(build) if KIND_OF[type(body)] in BULKY else build()
        kind = str(KIND_OF[type(body)])
        try:
            await self._bus.publish(topic, payload, retain=spec.retained)
        except PublishRefusedError as exc:
            # Not a flaky network: this agent's broker rights are wrong. Loud, and counted.
            self.metrics.publishes_refused.labels(kind).inc()
            log.error("publish_refused", topic=topic, kind=kind, code=exc.code)  # noqa: TRY400
            raise
        self.metrics.messages_sent.labels(kind).inc()
        self.metrics.bytes_sent.labels(kind).inc(len(payload))
        log.debug("message_sent", topic=topic, kind=type(body).__name__, size=len(payload))
        return len(payload)

    async def try_send(
        self, spec: TopicSpec, body: Body, *, round: int, agent_id: str | None = None
    ) -> int | None:
        """``send``, but a ``TransportError`` (the broker unreachable for longer than the
        publish timeout) is logged as ``message_not_sent`` and returns None: for the rounds,
        an unsent message is a dropout, not a reason to stop."""
        try:
            return await self.send(spec, body, round=round, agent_id=agent_id)
        except (TransportError, SealError) as exc:
            log.warning(
                "message_not_sent",
                topic=spec.name,
                kind=type(body).__name__,
                to=agent_id,
                error=str(exc),
            )
            return None
