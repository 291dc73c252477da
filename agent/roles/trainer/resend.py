"""A trainer's answer to its aggregator's reconnect: publish again what it sent meanwhile.

On a NATS cluster (``agent.bus.nats_bus``) nothing is kept for a client: when the node the
aggregator is connected to dies, what the trainers publish to it (a join, ``model_update``,
the SecAgg+ stages' ``advertise_keys``, ``share_keys``, ``masked_input``, ``unmask``) until its
client has resubscribed on another node is lost, though the trainers' own sessions never
broke, so their supervisors' replay after a reconnect (``agent.bus.replay``) does not run.
The aggregator counts its reconnects in every ``federation_status``
(``FederationStatus.reconnects``) and sends one at once after each; a trainer that sees the
count of the incarnation it follows rise re-publishes its replay log (its publishes of the
last ``replay_window`` seconds, at the delays of ``agent.bus.replay.REPLAY_DELAYS``). Every
resend is the identical signed message, so the aggregator drops what it already had by
message id (``runtime.dedupe``), and a SecAgg+ masked input is never accepted twice. Chunk
frames are not in the replay log: a chunked upload cut by the gap still ends as a dropout.
MQTT keeps sessions: its bus has no replay log and nothing is resent.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable

import structlog

from agent.bus.base import Bus
from agent.bus.replay import REPLAY_DELAYS
from agent.messages.bodies import FederationStatus

log = structlog.get_logger(__name__)


@runtime_checkable
class ReplaysRecent(Protocol):
    """A bus that can re-publish its recent publishes on demand (``SupervisedBus``)."""

    async def replay_recent(self) -> bool: ...


class AggregatorReconnects:
    """Watches ``FederationStatus.reconnects`` of the aggregator incarnation; ``run`` resends.

    Args:
        bus: the trainer's bus (nothing is resent unless it is ``ReplaysRecent``).
    """

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self._incarnation: str | None = None
        self._reconnects = 0
        self._due = asyncio.Event()
        self._own_at = float("-inf")  # our own bus's last reconnect (time.monotonic())

    def reconnected(self) -> None:
        """Our own bus reconnected: its supervisor replays the same log meanwhile (at
        ``REPLAY_DELAYS``), so a rise seen within them sends nothing more (a second burst
        of the same messages only trips the aggregator's per-sender rate limit)."""
        self._own_at = time.monotonic()

    def saw(self, status: FederationStatus) -> None:
        """A ``federation_status``: if its incarnation is the one seen last and its count of
        reconnects rose, a resend is due (the first status of an incarnation only sets the
        count; an older copy, replayed, never lowers it)."""
        if status.incarnation != self._incarnation:
            self._incarnation, self._reconnects = status.incarnation, status.reconnects
            return
        if status.reconnects > self._reconnects:
            self._reconnects = status.reconnects
            replaying = time.monotonic() - self._own_at < REPLAY_DELAYS[-1]
            log.info("aggregator_reconnected", reconnects=status.reconnects, resend=not replaying)
            if not replaying:
                self._due.set()

    async def run(self) -> None:
        """Resend whenever one is due, until cancelled."""
        bus = self._bus
        if not isinstance(bus, ReplaysRecent):
            return
        while True:
            await self._due.wait()
            self._due.clear()
            await bus.replay_recent()
