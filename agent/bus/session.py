"""One broker connection as the supervisor sees it, and how operations on it are bounded.

Adapters implement :class:`Session`; :func:`race` runs an operation on a session but gives
up (``SessionEndedError``) as soon as that session ends, because a client library may leave
an operation hanging on a dead connection (aiomqtt waits for a PUBACK that never comes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from agent.errors import TransportError

T = TypeVar("T")

#: How a session hands an incoming message to the bus: canonical topic, payload, retained.
Deliver = Callable[[str, bytes, bool], None]


class SessionLostError(TransportError):
    """Raised by a :class:`Session` whose connection is gone; the bus retries elsewhere."""


class Session(Protocol):
    """One live broker connection opened by an adapter. It never reconnects by itself.

    Operations may raise :class:`SessionLostError` when the connection is gone and
    :class:`~agent.errors.TransportError` when the broker refuses them; they may also simply
    hang on a dead connection, which the bus handles by racing them against ``run``.

    ``max_payload`` is the largest payload the broker announced it accepts on this
    connection (None: it announces no limit).
    """

    @property
    def max_payload(self) -> int | None: ...

    async def subscribe(self, topic_filter: str) -> None: ...

    async def publish(self, topic: str, payload: bytes, *, retain: bool) -> None: ...

    async def run(self) -> str:
        """Deliver incoming messages until the connection ends; return the reason."""
        ...

    async def close(self, *, clean: bool) -> None:
        """Release the connection. ``clean`` means the bus is exiting normally."""
        ...


class SessionEndedError(Exception):
    """The session an operation ran on ended before the operation finished."""


@dataclass(eq=False)
class LiveSession:
    """A session while the bus uses it; ``ended`` is set once, with ``reason``."""

    session: Session
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = ""

    def end(self, reason: str) -> None:
        if not self.ended.is_set():
            self.reason = reason
            self.ended.set()


async def race(live: LiveSession, operation: Awaitable[T]) -> T:
    """Await ``operation`` unless ``live`` ends first (then raise ``SessionEndedError``)."""
    task = asyncio.ensure_future(operation)
    ended = asyncio.ensure_future(live.ended.wait())
    try:
        await asyncio.wait({task, ended}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        ended.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
    if task.cancelled():
        raise SessionEndedError
    return task.result()
