"""The bounded queue of incoming messages that every adapter feeds and ``messages()`` reads."""

from __future__ import annotations

import asyncio
from collections import deque

from agent.bus.base import BusMessage


class Inbox:
    """A bounded FIFO that never blocks the producer and can be closed.

    ``put`` is synchronous (callable from a broker callback) and refuses the newest message
    when full. ``get`` waits for a message and returns ``None`` once the inbox is closed and
    drained, which ends ``Bus.messages()``.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._items: deque[BusMessage] = deque()
        self._changed = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, message: BusMessage) -> bool:
        """Append ``message``; False (and nothing stored) if full or closed."""
        if self._closed or len(self._items) >= self.maxsize:
            return False
        self._items.append(message)
        self._changed.set()
        return True

    async def get(self) -> BusMessage | None:
        """The oldest message; ``None`` when closed and empty."""
        while not self._items:
            if self._closed:
                return None
            self._changed.clear()
            await self._changed.wait()
        return self._items.popleft()

    def close(self) -> None:
        """Refuse new messages; readers drain what is queued, then stop."""
        self._closed = True
        self._changed.set()

    def reopen(self) -> None:
        """Empty the inbox and accept messages again (a bus being re-entered)."""
        self._items.clear()
        self._closed = False
        self._changed.clear()
