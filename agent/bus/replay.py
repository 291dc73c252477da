"""What a bus re-publishes after a reconnect, for transports that keep nothing for us.

Core NATS is at most once and keeps no session: when nats-server restarts, every client
reconnects on its own backoff, and what a peer publishes before we resubscribed is gone
(the masked inputs of a SecAgg+ round in flight, say). ``ReplayLog`` keeps our own publishes
of the last ``window`` seconds (at most ``max_bytes``); after each reconnect the supervisor
re-publishes them at the delays in ``REPLAY_DELAYS`` (at once, then when the slowest peer's
backoff, capped at ``backoff_max`` = 5 s by default, has brought it back too). Receivers drop
the copies by message id (``runtime.dedupe``), so a replay is harmless where the first copy
arrived. For a retained topic only the newest message is kept, so a replay never puts an
older retained message back in place of a newer one.

JetStream (durable consumers per subscription) would give the same with server-side storage;
it needs JetStream on every nats-server, consumer and ack permissions for every identity in
the locked-down authorization (``agent.lockdown.nats``), and it stores every model broadcast:
not used here (ARCHITECTURE.md §8).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from agent.bus.session import LiveSession, SessionEndedError, SessionLostError, race
from agent.errors import TransportError

#: Seconds after a reconnect at which the log is re-published.
REPLAY_DELAYS = (0.0, 2.0, 6.0)
#: The first bytes of a chunk frame (``agent.messages.chunks.MAGIC``, a layer above; a test
#: keeps the two equal). Chunk frames are not kept: model-sized messages would hold the
#: whole byte budget in memory (64 MiB per process, for ``window`` seconds after every
#: model broadcast or update), and above it they push their own manifest out first, so
#: their replay could not complete the transfer anyway. A chunked transfer cut by a
#: reconnect ends at its deadline as a dropout (``runtime.reassembly``).
CHUNK_MAGIC = b"FBC1"


@dataclass(frozen=True, slots=True)
class Sent:
    """One publish: when (``time.monotonic()``), where, what."""

    at: float
    topic: str
    payload: bytes
    retain: bool


class ReplayLog:
    """Our recent publishes, oldest first, bounded by age and bytes.

    Args:
        window: seconds a publish is kept.
        max_bytes: payload bytes kept at most (the oldest go first).
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        window: float,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.max_bytes = max_bytes
        self._clock = clock
        self._sent: OrderedDict[int, Sent] = OrderedDict()
        self._retained: dict[str, int] = {}  # topic -> key of its newest retained publish
        self._next = 0
        self._bytes = 0

    def __len__(self) -> int:
        self._expire()
        return len(self._sent)

    def record(self, topic: str, payload: bytes, *, retain: bool) -> None:
        """Keep a publish that the broker acknowledged; a chunk frame is not kept (see
        ``CHUNK_MAGIC``)."""
        if payload[:4] == CHUNK_MAGIC:
            return
        if retain and (old := self._retained.pop(topic, None)) is not None:
            self._forget(old)
        key, self._next = self._next, self._next + 1
        self._sent[key] = Sent(self._clock(), topic, payload, retain)
        self._bytes += len(payload)
        if retain:
            self._retained[topic] = key
        self._expire()

    def recent(self) -> Iterator[Sent]:
        """The publishes still within the window, oldest first (a snapshot)."""
        self._expire()
        return iter(list(self._sent.values()))

    def _expire(self) -> None:
        horizon = self._clock() - self.window
        while self._sent:
            key, oldest = next(iter(self._sent.items()))
            if oldest.at >= horizon and self._bytes <= self.max_bytes:
                break
            self._forget(key)

    def _forget(self, key: int) -> None:
        sent = self._sent.pop(key, None)
        if sent is None:
            return
        self._bytes -= len(sent.payload)
        if sent.retain and self._retained.get(sent.topic) == key:
            del self._retained[sent.topic]


async def republish(live: LiveSession, replay_log: ReplayLog, log: Any) -> None:
    """Re-publish our recent publishes on ``live`` at ``REPLAY_DELAYS`` after a reconnect
    (receivers drop the copies they already have by message id); ``log`` is the bus's
    bound logger (``bus_replayed``, ``bus_replay_failed``)."""
    waited = 0.0
    for delay in REPLAY_DELAYS:
        await asyncio.sleep(delay - waited)
        waited = delay
        sent = list(replay_log.recent())
        try:
            for message in sent:
                await race(live, live.session.publish(message.topic, message.payload, retain=False))
        except (SessionEndedError, SessionLostError):
            return  # the next session replays
        except TransportError as exc:
            log.warning("bus_replay_failed", reason=str(exc))
            return
        log.info("bus_replayed", messages=len(sent), after=delay)
