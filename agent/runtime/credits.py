"""Flow control for chunked uploads: the receiver's ``chunk_ack``s grant the sender credit.

Core NATS has no flow control, and MQTT's per-connection window does not stop a whole cohort
from filling the aggregator's queue: three trainers sending 40 MB each at once overran
nats-server's 64 MiB per-connection buffer on a busy 2-core machine, and queued chunks held in
the aggregator's memory grow with the cohort. So a trainer's chunked upload sends chunk
``index`` only once the aggregator granted it: ``index < grant`` of the newest ``chunk_ack``
(nothing before the first one, which the aggregator sends when it opens the transfer). The
aggregator grants from one budget shared by every sender (``agent.runtime.credit_pool``,
``[transfer] in_flight``), so its queue holds at most that many bytes of chunks whatever the
cohort size. An acknowledgement without a grant (``grant`` None) allows ``WINDOW`` chunks
beyond the ``received`` ones (a sliding window, as TCP's receive window). A sender that hears
nothing for ``wait`` seconds gives the upload up (``NotConnectedError``: the round counts it
as a dropout).
"""

from __future__ import annotations

import asyncio

from agent.errors import NotConnectedError
from agent.messages.bodies import ChunkAck

#: Chunks a sender may have unacknowledged (at most, per transfer, under a shared grant too).
WINDOW = 8
#: The receiver acknowledges after every this many kept chunks (and the last).
ACK_EVERY = WINDOW // 4


class Credits:
    """What the receivers granted, per transfer id (one per sender's upload): the chunks
    below that index may be sent."""

    def __init__(self, *, wait: float) -> None:
        self._wait = wait
        self._allowed: dict[bytes, int] = {}
        self._changed = asyncio.Condition()

    def open(self, transfer: bytes) -> None:
        self._allowed[transfer] = 0

    def close(self, transfer: bytes) -> None:
        self._allowed.pop(transfer, None)

    async def on_ack(self, ack: ChunkAck) -> None:
        """Record a receiver's acknowledgement (ignored for a transfer not in flight, and
        when it allows less than an earlier one)."""
        allowed = ack.received + WINDOW if ack.grant is None else ack.grant
        if ack.transfer in self._allowed and allowed > self._allowed[ack.transfer]:
            self._allowed[ack.transfer] = allowed
            async with self._changed:
                self._changed.notify_all()

    async def before(self, transfer: bytes, index: int) -> None:
        """Wait until chunk ``index`` is granted.

        Raises:
            NotConnectedError: no acknowledgement moved the window for ``wait`` seconds.
        """
        try:
            async with asyncio.timeout(self._wait), self._changed:
                await self._changed.wait_for(lambda: index < self._allowed.get(transfer, 0))
        except TimeoutError as exc:
            raise NotConnectedError(
                f"no chunk_ack for {self._wait} s (chunk {index}): the receiver fell silent"
            ) from exc
