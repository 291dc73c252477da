"""What a trainer's inbox may have missed while it had no session, sent again when it rejoins.

A NATS cluster keeps nothing for a client (``agent.bus.nats_bus``): when the node a trainer
was connected to dies, what the aggregator sent to its inbox until it resubscribed on another
node (``fit_ins``, ``relay_keys``, ``relay_shares``, ``unmask_request``, a ``chunk_ack``) is
lost, though the aggregator's own session never broke, so the supervisor's replay after a
reconnect (``agent.bus.replay``) does not run. The trainer rejoins after every reconnect
(``roles.trainer.role``); ``Admission`` then calls :meth:`InboxReplay.resend`, which
publishes again the aggregator's payloads of the replay window on that inbox. The trainer
drops the copies it had by message id (``runtime.dedupe``). Chunk frames are left out: the
current model goes to the inbox with every ``join_accepted`` anyway, and a chunked message
cannot be completed from part of its frames. Earlier admissions (``join_accepted`` and the
``model_para`` sent with it) are left out too: the answer to this join has just superseded
them, and a trainer that restarted has no message id to drop their copies by, so an older
``join_accepted`` would take it back to that admission's round and model, and the
``fit_ins`` for the current version would wait for a model that never comes again. MQTT
keeps sessions (the broker queues the inbox for a reconnecting client): nothing to resend,
and ``MqttBus`` has no ``recent_publishes``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import structlog

from agent.bus.base import Bus
from agent.errors import DecodeError, TransportError
from agent.messages import topics
from agent.messages.chunks import is_chunk
from agent.messages.codec import decode_envelope
from agent.messages.kinds import Kind

log = structlog.get_logger(__name__)

#: What the answer to a join sends anew (``Admission``): never resent from the window.
SUPERSEDED_BY_JOIN = frozenset({Kind.JOIN_ACCEPTED, Kind.MODEL_PARA})


@runtime_checkable
class KeepsRecent(Protocol):
    """A bus that lists its own recent publishes on a topic (``NatsBus``)."""

    def recent_publishes(self, topic: str) -> list[bytes]: ...


class InboxReplay:
    """``Admission``'s ``on_rejoin`` hook over the aggregator's bus."""

    def __init__(self, bus: Bus, federation: str) -> None:
        self._bus = bus
        self._federation = federation

    async def resend(self, agent_id: str) -> None:
        """Publish again what this bus sent to ``agent_id``'s inbox within its replay
        window (no chunk frames, no earlier admission: ``SUPERSEDED_BY_JOIN``); a failed
        publish is logged, never raised."""
        if not isinstance(self._bus, KeepsRecent):
            return
        inbox = topics.INBOX.format(self._federation, agent_id)
        payloads = [p for p in self._bus.recent_publishes(inbox) if _worth_resending(p)]
        try:
            for payload in payloads:
                await self._bus.publish(inbox, payload)
        except TransportError as exc:
            log.warning("inbox_resend_failed", agent=agent_id, reason=str(exc))
            return
        if payloads:
            log.info("inbox_resent", agent=agent_id, messages=len(payloads))


def _worth_resending(payload: bytes) -> bool:
    """Whether one of our own inbox publishes may still be missing and current: not a chunk
    frame, not of a kind in ``SUPERSEDED_BY_JOIN``."""
    if is_chunk(payload):
        return False
    try:
        envelope, _ = decode_envelope(payload)
    except DecodeError:
        return False  # ours, so never: nothing to resend
    return envelope.kind not in SUPERSEDED_BY_JOIN
