"""Flow control for chunked uploads: the receiver's ``chunk_ack``s grant the sender credit.

Core NATS has no flow control, and MQTT's per-connection window does not stop a whole cohort
from filling the aggregator's queue: three trainers sending 40 MB each at once overran
nats-server's 64 MiB per-connection buffer on a busy 2-core machine, and queued chunks held in
the aggregator's memory grow with the cohort. So a trainer's chunked upload keeps at most
``WINDOW`` chunks beyond what the aggregator has acknowledged in flight (a sliding window, as
TCP's receive window); the aggregator acknowledges every ``ACK_EVERY`` kept chunks
(``Dispatcher(on_chunk=...)``). The aggregator's queue then holds at most cohort x WINDOW
chunks. A sender that hears nothing for ``wait`` seconds gives the upload up
(``NotConnectedError``: the round counts it as a dropout).
"""

from __future__ import annotations

import asyncio

from agent.errors import NotConnectedError
from agent.messages.bodies import ChunkAck

#: Chunks a sender may have unacknowledged.
WINDOW = 8
#: The receiver acknowledges after every this many kept chunks (and the last).
ACK_EVERY = WINDOW // 4


class Credits:
    """What the receivers acknowledged, per transfer id (one per sender's upload)."""

    def __init__(self, *, wait: float) -> None:
        self._wait = wait
        self._acked: dict[bytes, int] = {}
        self._changed = asyncio.Condition()

    def open(self, transfer: bytes) -> None:
        self._acked[transfer] = 0

    def close(self, transfer: bytes) -> None:
        self._acked.pop(transfer, None)

    async def on_ack(self, ack: ChunkAck) -> None:
        """Record a receiver's acknowledgement (ignored for a transfer not in flight)."""
        if ack.transfer in self._acked and ack.received > self._acked[ack.transfer]:
            self._acked[ack.transfer] = ack.received
            async with self._changed:
                self._changed.notify_all()

    async def before(self, transfer: bytes, index: int) -> None:
        """Wait until chunk ``index`` is within the window.

        Raises:
            NotConnectedError: no acknowledgement moved the window for ``wait`` seconds.
        """
        try:
            async with asyncio.timeout(self._wait), self._changed:
                await self._changed.wait_for(lambda: index < self._acked.get(transfer, 0) + WINDOW)
        except TimeoutError as exc:
            raise NotConnectedError(
                f"no chunk_ack for {self._wait} s (chunk {index}): the receiver fell silent"
            ) from exc
