"""Sending: build an envelope around a body and publish it on a topic of the table."""

from __future__ import annotations

import structlog

from agent.bus.base import Bus
from agent.errors import TransportError
from agent.messages.bodies import Body
from agent.messages.codec import encode
from agent.messages.topics import TopicSpec

log = structlog.get_logger(__name__)


class Outbox:
    """Publishes bodies as ``sender`` in ``federation`` (one per role instance)."""

    def __init__(self, bus: Bus, *, federation: str, sender: str) -> None:
        self._bus = bus
        self.federation = federation
        self.sender = sender

    async def send(
        self, spec: TopicSpec, body: Body, *, round: int, agent_id: str | None = None
    ) -> int:
        """Encode ``body`` and publish it on ``spec`` (retained if the spec says so).

        Returns the payload size in bytes. Raises ``TransportError`` from the bus.
        """
        topic = spec.format(self.federation, agent_id)
        payload = encode(body, federation=self.federation, round=round, sender=self.sender)
        await self._bus.publish(topic, payload, retain=spec.retained)
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
        except TransportError as exc:
            log.warning("message_not_sent", topic=spec.name, kind=type(body).__name__,
                        to=agent_id, error=str(exc))  # fmt: skip
            return None
