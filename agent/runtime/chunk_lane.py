"""What the receive loop hands off so it can keep taking chunks: the chunks' hashes and
spooling, acknowledgements and completed transfers (``agent.runtime.listeners.Dispatcher.run``).

Checking and spooling one chunk takes a hash; acknowledging it takes a broker round trip
(a NATS flush, an MQTT PUBACK); rebuilding and handling a complete update takes passes over
the whole model (read back, validate, bound, fold). Done inline, each of these stalls every
other sender's upload, whose window (``agent.runtime.credits``) then fills. So, while the
dispatcher's ``run`` is active:

- **chunks** that passed the cheap checks (``Reassembly.check``) are hashed and kept (spooled,
  or handed to their transfer's sink: ``reassembly.keep``) by the lane's one keeping thread,
  at most ``QUEUED`` at a time (then the receive loop waits), while the receive loop goes on
  taking the next frames off the bus; each outcome is settled (``Reassembly.settle``, on the
  event loop, in the order handed) by one task. A thread hop the receive loop awaited per
  chunk made it the upload's limit on a loaded machine (measured, 10M plain over NATS, 3
  senders: the receive loop spent 0.60 s of 0.61 s awaiting 99 chunks, ~6 ms each, for a 1 ms
  hash);
- **acknowledgements** are sent by their own task per transfer, coalesced: a transfer has at
  most one ``chunk_ack`` in flight, and the next one carries the newest count;
- **completed transfers** are queued (at most ``PENDING``: beyond that the receive loop
  waits, which backs the senders off through their windows) and rebuilt and handled in
  arrival order, one at a time, by one task. Their spools stay on disk until then.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import structlog

from agent.errors import DecodeError, ProtocolError
from agent.runtime.reassembly import Pending, Reassembly, Transfer, keep

log = structlog.get_logger(__name__)

#: Completed transfers waiting for their handler before the receive loop waits too.
PENDING = 4
#: Chunks handed to the keeping thread and not yet settled before the receive loop waits.
QUEUED = 4

#: Send one acknowledgement: (transfer, chunks kept).
SendAck = Callable[[Transfer, int], Awaitable[None]]
#: Rebuild and handle one complete transfer.
Finish = Callable[[Transfer], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Keeping:
    """How the lane settles the chunks its thread took: in ``reassembly``, then ``kept``
    (the transfer and the frame's size) or ``drop`` (topic, size, reason, detail)."""

    reassembly: Reassembly
    kept: Callable[[Transfer, int], Awaitable[object]]
    drop: Callable[[str, int, str, str], None]

    async def settle(self, pending: Pending, error: Exception | None) -> None:
        """Settle one chunk (``error`` None: kept)."""
        transfer = self.reassembly.settle(pending, kept=error is None)
        topic, size = pending.transfer.topic, pending.size
        if transfer is not None:
            await self.kept(transfer, size)
        elif isinstance(error, ProtocolError):
            self.drop(topic, size, error.reason, str(error))
        elif error is not None and self.reassembly.is_open(pending.transfer):
            log.error("chunk_not_kept", topic=topic, error=repr(error))  # not a closed spool
            self.drop(topic, size, DecodeError.reason, repr(error))


class ChunkLane:
    """The hand-off of one running receive loop (see the module docstring); its tasks live
    in ``tg``, the receive loop's group."""

    def __init__(
        self,
        tg: asyncio.TaskGroup,
        *,
        send_ack: SendAck | None,
        finish: Finish,
        keeping: Keeping,
    ) -> None:
        self._tg = tg
        self._send_ack = send_ack
        self._finish = finish
        self._keeping = keeping
        self._acks: dict[tuple[str, bytes], tuple[Transfer, int]] = {}
        self._acking: set[tuple[str, bytes]] = set()
        self._done: asyncio.Queue[Transfer] = asyncio.Queue(PENDING)
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(QUEUED)
        self._kept: asyncio.Queue[tuple[Pending, Exception | None]] = asyncio.Queue()
        self._keeper: ThreadPoolExecutor | None = None
        self._spawn(self._complete_each())
        self._spawn(self._settle_each())

    async def keep(self, pending: Pending) -> None:
        """Hand a checked chunk to the keeping thread (``reassembly.keep``); its outcome is
        settled in the order handed (``Keeping.settle``). Waits while ``QUEUED`` chunks are
        not settled."""
        await self._slots.acquire()
        loop = asyncio.get_running_loop()
        if self._keeper is None:
            self._keeper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunks")

        def run() -> None:
            error: Exception | None = None
            try:
                keep(pending)
            except Exception as exc:  # noqa: BLE001 - settled on the loop: a drop with its reason
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop closed: nothing to settle
                loop.call_soon_threadsafe(self._kept.put_nowait, (pending, error))

        self._keeper.submit(run)

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

    async def _settle_each(self) -> None:
        while True:
            pending, error = await self._kept.get()
            try:
                await self._keeping.settle(pending, error)
            finally:
                self._slots.release()

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
        if self._keeper is not None:
            self._keeper.shutdown(wait=False, cancel_futures=True)
            self._keeper = None
        while not self._done.empty():
            self._done.get_nowait().close()
