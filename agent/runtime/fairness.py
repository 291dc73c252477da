"""Per-sender fairness on the aggregator's inbound path, before any message is decoded.

The bus hands every message of every subscription to one FIFO; behind it, one receive loop
verifies and decodes them one at a time. One device that floods (2,000 joins in 2 s) would fill
that FIFO and push honest messages out (``bus_queue_full``). ``FairQueue`` sits between the bus
and ``Dispatcher.dispatch`` (``Dispatcher(fairness=…)``) and, per sender, before decode:

1. a token bucket per (sender, topic class): ``rate`` messages/s with ``burst`` on a trainer's
   own topics, ``join_rate``/``join_burst`` on the shared join topic; a message beyond it is
   shed (``rate_limited``);
2. a queue share: a sender holds at most ``max(min_share, capacity // senders)`` queued
   messages (``queue_share``); when the whole queue is full the *longest* sender's newest
   message makes room (``queue_full``), so a quiet sender is never the one pushed out;
3. round-robin dequeue over the senders with queued messages.

The sender is the topic's agent id where the topic names one (the broker's ACL lets only that
agent publish there), otherwise the envelope's claimed ``sender`` (read without checking the
signature; ``?`` when unreadable): a flooder that claims other names on the join topic can
only crowd out joins claimed under those names, which the device re-sends. Every shed message
is counted in ``fedbus_messages_shed_total{sender, reason}`` (at most ``max_labels`` distinct
senders, the rest as ``other``) and logged, sampled (the first of each sender and reason, then
every 100th).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import StrEnum

import structlog

from agent.bus.base import BusMessage
from agent.errors import ProtocolError
from agent.messages.codec import decode_envelope
from agent.messages.topics import JOIN, classify
from agent.runtime.metrics import Metrics

log = structlog.get_logger(__name__)

_MAX_BUCKETS = 16384


class ShedReason(StrEnum):
    """Why ``FairQueue`` shed a message before decode."""

    RATE_LIMITED = "rate_limited"
    QUEUE_SHARE = "queue_share"
    QUEUE_FULL = "queue_full"


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float

    def take(self, now: float, *, rate: float, burst: int) -> bool:
        self.tokens = min(float(burst), self.tokens + (now - self.at) * rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(frozen=True, slots=True)
class FairnessLimits:
    """The ``FairQueue`` settings (``[aggregator] sender_rate``; the bursts are two
    seconds' worth; joins: 2.5/s). Rates in messages per second."""

    rate: float = 200.0
    burst: int = 400
    join_rate: float = 2.5
    join_burst: int = 5
    capacity: int = 4096
    min_share: int = 64
    max_labels: int = 1024

    @classmethod
    def of(cls, *, rate: float, join_rate: float = 2.5) -> FairnessLimits:
        """Limits with bursts of two seconds' worth of each rate (at least 1)."""
        return cls(
            rate=rate,
            burst=max(1, round(2 * rate)),
            join_rate=join_rate,
            join_burst=max(1, round(2 * join_rate)),
        )


class FairQueue:
    """Per-sender rate limits, queue shares and round-robin, ahead of the receive pipeline.

    Args:
        federation: classifies topics (whose agent id is the sender).
        limits: rates, bursts, capacity.
        metrics: ``messages_shed`` by sender and reason.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        federation: str,
        *,
        limits: FairnessLimits | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._federation = federation
        self.limits = limits or FairnessLimits()
        self.metrics = Metrics() if metrics is None else metrics
        self._clock = clock
        self._queues: OrderedDict[str, deque[BusMessage]] = OrderedDict()  # round-robin order
        self._buckets: dict[tuple[str, bool], _Bucket] = {}
        self._labels: set[str] = set()
        self._size = 0
        self._changed = asyncio.Event()
        self._closed = False
        #: shed messages by (sender label, reason)
        self.shed: dict[tuple[str, str], int] = {}

    def __len__(self) -> int:
        return self._size

    def sender_of(self, raw: BusMessage) -> tuple[str, bool]:
        """(sender, on the join topic) of ``raw``, without verifying anything."""
        where = classify(raw.topic, self._federation)
        if where is not None and where[1] is not None:
            return where[1], False
        try:
            sender = decode_envelope(raw.payload, max_size=len(raw.payload))[0].sender
        except ProtocolError:
            sender = "?"
        return sender, where is not None and where[0] is JOIN

    def put(self, raw: BusMessage) -> bool:
        """Queue ``raw`` unless its sender is over its rate or share; False when shed."""
        if self._closed:
            return False
        sender, join = self.sender_of(raw)
        limits = self.limits
        now = self._clock()
        bucket = self._buckets.get((sender, join))
        if bucket is None:
            if len(self._buckets) >= _MAX_BUCKETS:  # claimed names are unbounded: start over
                self._buckets.clear()
            burst = limits.join_burst if join else limits.burst
            bucket = self._buckets[(sender, join)] = _Bucket(float(burst), now)
        rate, burst = (limits.join_rate, limits.join_burst) if join else (limits.rate, limits.burst)
        if not bucket.take(now, rate=rate, burst=burst):
            self._shed(sender, ShedReason.RATE_LIMITED, raw)
            return False
        queue = self._queues.get(sender)
        if queue is None:
            queue = self._queues[sender] = deque()
        share = max(limits.min_share, limits.capacity // max(1, len(self._queues)))
        if len(queue) >= share:
            self._shed(sender, ShedReason.QUEUE_SHARE, raw)
            return False
        if self._size >= limits.capacity:
            longest = max(self._queues, key=lambda s: len(self._queues[s]))
            if longest == sender or len(self._queues[longest]) <= len(queue):
                self._shed(sender, ShedReason.QUEUE_FULL, raw)
                return False
            self._shed(longest, ShedReason.QUEUE_FULL, self._queues[longest].pop())
            self._size -= 1
        queue.append(raw)
        self._size += 1
        self._changed.set()
        return True

    async def get(self) -> BusMessage | None:
        """The next message, round-robin over senders; None once closed and drained."""
        while self._size == 0:
            if self._closed:
                return None
            self._changed.clear()
            await self._changed.wait()
        while True:
            sender, queue = next(iter(self._queues.items()))
            self._queues.move_to_end(sender)
            if queue:
                self._size -= 1
                return queue.popleft()
            del self._queues[sender]  # idle senders leave the rotation (and the share count)

    def close(self) -> None:
        self._closed = True
        self._changed.set()

    async def through(self, source: AsyncIterator[BusMessage]) -> AsyncIterator[BusMessage]:
        """Every message of ``source`` that is not shed, in fair order. ``source`` is drained
        by a task of this generator, as fast as it delivers, so the bus's own FIFO stays
        short while the receive loop works."""

        async def pump() -> None:
            try:
                async for raw in source:
                    self.put(raw)
            finally:
                self.close()

        task = asyncio.create_task(pump(), name="fair-queue-pump")
        try:
            while (raw := await self.get()) is not None:
                yield raw
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _shed(self, sender: str, reason: ShedReason, raw: BusMessage) -> None:
        label = sender
        if label not in self._labels:
            if len(self._labels) < self.limits.max_labels:
                self._labels.add(label)
            else:
                label = "other"
        key = (label, str(reason))
        count = self.shed.get(key, 0) + 1
        self.shed[key] = count
        self.metrics.messages_shed.labels(label, str(reason)).inc()
        if count == 1 or count % 100 == 0:
            log.warning(
                "message_shed",
                sender=label,
                reason=str(reason),
                topic=raw.topic,
                size=len(raw.payload),
                shed=count,
            )
