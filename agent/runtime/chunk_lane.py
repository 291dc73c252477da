"""What the receive loop hands off so it can keep taking chunks: acknowledgements and
completed transfers (``agent.runtime.listeners.Dispatcher.run``).

Checking and spooling one chunk takes a hash; acknowledging it takes a broker round trip
(a NATS flush, an MQTT PUBACK); rebuilding and handling a complete update takes passes over
the whole model (read back, validate, bound, fold). Done inline, each of these stalls every
other sender's upload, whose window (``agent.runtime.credits``) then fills. So, while the
dispatcher's ``run`` is active:

- **acknowledgements** are sent by their own task per transfer, coalesced: a transfer has at
  most one ``chunk_ack`` in flight, and the next one carries the newest count;
- **completed transfers** are queued (at most ``PENDING``: beyond that the receive loop
  waits, which backs the senders off through their windows) and rebuilt and handled in
  arrival order, one at a time, by one task. Their spools stay on disk until then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine

from agent.runtime.reassembly import Transfer

#: Completed transfers waiting for their handler before the receive loop waits too.
PENDING = 4

#: Send one acknowledgement: (transfer, chunks kept).
SendAck = Callable[[Transfer, int], Awaitable[None]]
#: Rebuild and handle one complete transfer.
Finish = Callable[[Transfer], Awaitable[object]]


class ChunkLane:
    """The hand-off of one running receive loop (see the module docstring); its tasks live
    in ``tg``, the receive loop's group."""

    def __init__(self, tg: asyncio.TaskGroup, *, send_ack: SendAck | None, finish: Finish) -> None:
        self._tg = tg
        self._send_ack = send_ack
        self._finish = finish
        self._acks: dict[tuple[str, bytes], tuple[Transfer, int]] = {}
        self._acking: set[tuple[str, bytes]] = set()
        self._done: asyncio.Queue[Transfer] = asyncio.Queue(PENDING)
        self._tasks: set[asyncio.Task[None]] = set()
        self._spawn(self._complete_each())

    def ack(self, transfer: Transfer, kept: int) -> None:
        """Acknowledge ``kept`` chunks of ``transfer`` soon (a newer count replaces an
        unsent one)."""
        if self._send_ack is None:
            return
        key = transfer.key
        self._acks[key] = (transfer, kept)
        if key not in self._acking:
            self._acking.add(key)
            self._spawn(self._ack_each(key))

    async def complete(self, transfer: Transfer) -> None:
        """Queue a complete transfer for its handler (waits while ``PENDING`` are queued)."""
        await self._done.put(transfer)

    async def _ack_each(self, key: tuple[str, bytes]) -> None:
        assert self._send_ack is not None
        try:
            while (pending := self._acks.pop(key, None)) is not None:
                await self._send_ack(*pending)
        finally:
            self._acking.discard(key)

    async def _complete_each(self) -> None:
        while True:
            transfer = await self._done.get()
            await self._finish(transfer)

    def _spawn(self, coroutine: Coroutine[None, None, None]) -> None:
        task = self._tg.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stop(self) -> None:
        """Cancel the lane's tasks (the receive loop ended) and drop the transfers still
        queued (their spools closed)."""
        for task in list(self._tasks):
            task.cancel()
        while not self._done.empty():
            self._done.get_nowait().close()
