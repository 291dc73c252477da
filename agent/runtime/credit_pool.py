"""The receiver's side of chunk flow control: one budget of in-flight chunk bytes shared by
every open upload, whatever the number of senders.

A sender may publish chunk ``index`` of a transfer only once the receiver granted it
(``index < grant`` in a ``chunk_ack``, ``agent.runtime.credits``); before its first
acknowledgement it may publish none. The receiver grants chunks from one pool of
``budget`` bytes: a granted chunk is charged to the pool until it is kept (spooled to disk by
``agent.runtime.reassembly``), and a transfer that ends (complete, dropped, superseded, timed
out) gives back what it still held. So the chunks granted and not yet kept (those in the
broker, the client library's queue and the fair queue, i.e. the receiver's memory) are at
most ``budget`` bytes with 1 sender or 1,000: a credit-based scheme like HTTP/2's
connection-level flow-control window (RFC 9113 §5.2), shared across streams.

Credit is handed out one chunk at a time, round robin over the open transfers, each at most
``per_transfer`` chunks ahead of what it delivered (by default as many as the budget holds:
one sender alone may fill the whole window, n senders share it), so every sender keeps
progressing when the cohort outnumbers the budget (the one a grant skipped for want of
credit is first in line at the next). A fixed cap of 8 chunks per sender (and a 16 MiB
budget) left 3 senders of 40 MB waiting for credit 97% of their upload time at 10M over
NATS (measured); the window a sender needs is its bandwidth times the acknowledgement's
round trip, which the budget, not a per-sender constant, should bound. At least one chunk
is always grantable when nothing is in flight, so a
budget below one chunk slows a receiver down but never stalls it.

Chunks lost on the way (a broker node that died, a sender that vanished) would hold their
credit until their transfer times out and starve everyone else meanwhile; so the credit of a
transfer that delivered nothing for ``STALL`` seconds is written off (its late chunks, if any
come, are then beyond the budget once).

A new grant is announced (``due``) when it is ``ack_every`` chunks beyond the last one
announced, when the sender has used up what it was announced (it is waiting), or when it
covers the transfer's last chunk: acknowledgements stay about one per ``ack_every`` chunks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Generic, TypeVar

from agent.runtime.credits import ACK_EVERY

K = TypeVar("K")

#: Seconds without a kept chunk after which a transfer's outstanding credit is written off.
STALL = 10.0


@dataclass(slots=True)
class Grant:
    """What one open transfer was granted.

    Attributes:
        chunk_size: bytes the pool charges per chunk of it.
        count: its chunks.
        granted: chunks it may have sent (indexes below this).
        kept: chunks the receiver kept.
        announced: the grant last announced to its sender.
        written_off: chunks below this count are no longer charged (``STALL``).
        moved: when it last kept a chunk (or opened), ``time.monotonic()`` seconds.
    """

    chunk_size: int
    count: int
    granted: int = 0
    kept: int = 0
    announced: int = 0
    written_off: int = 0
    moved: float = 0.0

    @property
    def outstanding(self) -> int:
        """Chunks granted and not yet kept (nor written off)."""
        return max(0, self.granted - max(self.kept, self.written_off))


class CreditPool(Generic[K]):
    """``budget`` bytes of chunks in flight, shared by the open transfers (keyed by ``K``).

    Args:
        budget: bytes granted and not yet kept, all transfers together (≥ 1).
        per_transfer: chunks one transfer may be granted beyond what it delivered (None:
            as many as ``budget`` holds, at least one).
        ack_every: announce a grant after this many new chunks (see the module docstring).
    """

    def __init__(
        self, budget: int, *, per_transfer: int | None = None, ack_every: int = ACK_EVERY
    ) -> None:
        if budget < 1 or (per_transfer is not None and per_transfer < 1) or ack_every < 1:
            raise ValueError("budget, per_transfer and ack_every must be positive")
        self.budget = budget
        self._per = per_transfer
        self._every = ack_every
        self._grants: dict[K, Grant] = {}
        self._turn = 0  # where the next round-robin pass starts
        self._touched: set[K] = set()  # grants or kept counts changed since the last ``due``
        #: bytes granted and not yet kept, over every open transfer
        self.in_flight = 0
        #: the most ``in_flight`` ever was (for tests and benchmarks)
        self.peak = 0

    def __len__(self) -> int:
        return len(self._grants)

    def get(self, key: K) -> Grant | None:
        """The grant of an open transfer (None: not open)."""
        return self._grants.get(key)

    def open(self, key: K, *, chunk_size: int, count: int, now: float | None = None) -> None:
        """A transfer of ``count`` chunks of ``chunk_size`` bytes opened; it holds nothing
        until ``due`` grants it some."""
        self.close(key)
        self._grants[key] = Grant(chunk_size, count, moved=_now(now))

    def kept(self, key: K, kept: int, *, now: float | None = None) -> None:
        """Transfer ``key`` has ``kept`` chunks now (its credit for them comes back)."""
        grant = self._grants.get(key)
        if grant is None or kept <= grant.kept:
            return
        before = grant.outstanding
        grant.kept, grant.moved = kept, _now(now)
        self.in_flight -= (before - grant.outstanding) * grant.chunk_size
        self._touched.add(key)

    def close(self, key: K) -> None:
        """Transfer ``key`` ended: what it held comes back to the pool."""
        grant = self._grants.pop(key, None)
        self._touched.discard(key)
        if grant is not None:
            self.in_flight -= grant.outstanding * grant.chunk_size

    def due(self, *, now: float | None = None) -> list[K]:
        """Hand out the free credit (round robin; first writing off stalled transfers'); the
        transfers whose new grant should be announced now (see the module docstring),
        marked announced."""
        if self.in_flight >= self.budget:
            self._write_off(_now(now))
        self._distribute()
        out, still = [], set()
        for key in self._touched:  # only these can have become due
            g = self._grants[key]
            if g.granted <= g.announced:
                continue
            if (
                g.granted - g.announced >= self._every
                or g.kept >= g.announced
                or g.granted == g.count
            ):
                g.announced = g.granted
                out.append(key)
            else:
                still.add(key)  # more credit, not yet worth a message
        self._touched = still
        return out

    def _write_off(self, now: float) -> None:
        for g in self._grants.values():
            if g.outstanding and now - g.moved > STALL:
                self.in_flight -= g.outstanding * g.chunk_size
                g.written_off, g.moved = g.granted, now

    def _distribute(self) -> None:
        if not self._grants or self.in_flight >= self.budget:
            return
        keys = list(self._grants)
        start = self._turn % len(keys)
        granted = True
        while granted:
            granted = False
            for step in range(len(keys)):
                i = (start + step) % len(keys)
                g = self._grants[keys[i]]
                cap = self._per or max(1, self.budget // g.chunk_size)
                if g.granted >= g.count or g.outstanding >= cap:
                    continue
                if self.in_flight and self.in_flight + g.chunk_size > self.budget:
                    self._turn = i  # first in line when credit comes back
                    return
                g.granted += 1
                self.in_flight += g.chunk_size
                self._touched.add(keys[i])
                self.peak = max(self.peak, self.in_flight)
                granted = True
                start = self._turn = i + 1
                break


def _now(now: float | None) -> float:
    return time.monotonic() if now is None else now
