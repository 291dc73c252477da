"""Reassembly of chunked messages (``agent.messages.chunks``), bounded in bytes and time.

The receive pipeline (``agent.runtime.listeners``) hands a manifest that passed every check
of an ordinary message (signature, sealing, topic, round) to ``Reassembly.begin``, and every
chunk frame to ``Reassembly.add``. A transfer is keyed by (topic, transfer id), so a chunk
counts only on the topic its manifest came on: on a per-agent topic, only its agent's.

- **Each chunk is checked before it is kept**: its index must be in range and the SHA-256 of
  its data must equal the manifest's hash for that index (``chunk_mismatch`` otherwise).
  Chunks may come in any order; a repeat of a kept chunk is ignored.
- **Kept chunks go to disk, not memory**: each transfer spools into an unlinked temporary
  file (``tempfile.TemporaryFile``, mode 0600, gone with the process), written at the chunk's
  offset. Ciphertext stays ciphertext until ``assemble``. So a receiver's memory does not grow
  with the number of senders transferring at once; only the message being assembled is held.
  A transfer with a ``sink`` (``assembly.ChunkSink``, set by its listener's stream hook:
  streaming aggregation) hands each checked chunk to it instead, which spools it.
- **Bounded**: a manifest announcing more than ``max_message`` bytes, or more than the
  ``budget`` left by the transfers already open, is refused (``over_budget``); each topic
  has at most one open transfer (a newer manifest supersedes the older one, ``superseded``).
- **Flow-controlled** (with a ``CreditPool``, the aggregator's): the chunks its senders may
  have in flight are granted from one shared budget (``in_flight``,
  ``agent.runtime.credit_pool``); ``due`` names the transfers whose new grant their sender
  must be told (``Transfer.grant``).
- **Timed**: a transfer not complete ``timeout`` seconds after its manifest is dropped
  (``transfer_timeout``) at the next ``expire``: a missing chunk never makes anyone wait
  longer than that, and the round's own deadline counts the sender as a dropout.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from agent.errors import (
    ChunkMismatchError,
    OverBudgetError,
    SupersededError,
    TransferTimeoutError,
    UnknownTransferError,
)
from agent.messages.bodies import Manifest
from agent.messages.chunks import parse_frame
from agent.messages.envelope import Envelope
from agent.messages.transfer import TransferConfig
from agent.role import Identity
from agent.runtime.assembly import Transfer, stride
from agent.runtime.credit_pool import CreditPool

__all__ = ["DONE_MEMORY", "DropNote", "Limits", "Pending", "Reassembly", "Transfer", "keep"]

log = structlog.get_logger(__name__)

#: How many completed transfers are remembered (to ignore their duplicate chunks).
DONE_MEMORY = 256
#: Called for each transfer dropped without a message in hand: (topic, reason, detail).
DropNote = Callable[[str, str, str], None]
#: ``Transfer.received`` of a chunk checked and not yet settled (0: missing, 1: kept).
IN_FLIGHT = 2


@dataclass(frozen=True, slots=True)
class Pending:
    """One chunk that passed ``Reassembly.check``: chunk ``index`` of ``transfer``, ``data``
    as it came (a view of its frame of ``size`` bytes)."""

    transfer: Transfer
    index: int
    data: memoryview
    size: int


def keep(pending: Pending) -> None:
    """Check a chunk's data against its manifest hash and keep it: to its transfer's sink,
    or written to its spool. Touches no ``Reassembly`` state, so it may run in another
    thread than the receiver's (``agent.runtime.chunk_lane``); ``Reassembly.settle`` then
    records the outcome.

    Raises:
        ChunkMismatchError: the data does not match its hash.
        OSError, ValueError: the spool could not be written (closed: the transfer dropped).
    """
    transfer, index, data = pending.transfer, pending.index, pending.data
    manifest = transfer.manifest
    if hashlib.sha256(data).digest() != manifest.chunk_hashes[index]:
        raise ChunkMismatchError(f"chunk {index} does not match its manifest hash")
    if transfer.sink is not None:  # streaming aggregation: it spools the chunk
        transfer.sink.kept(transfer, index, data)
    else:
        os.pwrite(transfer.spool.fileno(), data, index * stride(manifest))


@dataclass(frozen=True, slots=True)
class Limits:
    """What one receiver holds in unfinished transfers.

    Attributes:
        max_message: largest bulk (bytes) one manifest may announce.
        budget: bytes all open transfers together may announce.
        timeout: seconds from a manifest to its last chunk.
        spool_dir: where the spool files go (None: the system's temporary directory).
        in_flight: bytes of chunks granted to all senders together and not yet kept (with
            flow control on, ``agent.runtime.credit_pool``).
    """

    max_message: int = 4 << 30
    budget: int = 8 << 30
    timeout: float = 300.0
    spool_dir: Path | None = None
    in_flight: int = 32 << 20

    @classmethod
    def of(cls, config: TransferConfig) -> Limits:
        """The limits a ``[transfer]`` table sets."""
        return cls(
            config.max_message, config.budget, config.timeout, config.spool_dir, config.in_flight
        )


class Reassembly:
    """The open transfers of one receiver (see the module docstring)."""

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        on_drop: DropNote | None = None,
        flow_control: bool = False,
    ) -> None:
        self.limits = Limits() if limits is None else limits
        self._on_drop = on_drop
        #: with ``flow_control``: the shared grant of chunks in flight (see the module doc)
        self.credit: CreditPool[tuple[str, bytes]] | None = (
            CreditPool(self.limits.in_flight) if flow_control else None
        )
        self._open: dict[tuple[str, bytes], Transfer] = {}
        self._by_topic: dict[str, Transfer] = {}
        #: recently completed transfers, whose late duplicate chunks are ignored quietly
        self._done: deque[tuple[str, bytes]] = deque(maxlen=DONE_MEMORY)

    @property
    def open_bytes(self) -> int:
        """Bytes announced by the open transfers (what the budget is charged)."""
        return sum(t.manifest.total_size for t in self._open.values())

    def __len__(self) -> int:
        return len(self._open)

    def begin(
        self,
        topic: str,
        envelope: Envelope,
        manifest: Manifest,
        identity: Identity | None = None,
        *,
        now: float | None = None,
    ) -> Transfer:
        """Open a transfer for a checked ``manifest`` that came on ``topic``.

        Raises:
            ChunkMismatchError: a manifest whose chunk count does not fit its sizes.
            OverBudgetError: more than ``max_message``, or than the budget has left.
        """
        now = time.monotonic() if now is None else now
        self.expire(now)
        count = -(-manifest.total_size // manifest.chunk_size)
        if count != len(manifest.chunk_hashes):
            raise ChunkMismatchError(
                f"{len(manifest.chunk_hashes)} chunk hashes for {manifest.total_size} bytes "
                f"in chunks of {manifest.chunk_size}"
            )
        limits = self.limits
        if manifest.total_size > limits.max_message:
            raise OverBudgetError(
                f"{manifest.total_size} bytes announced; this receiver takes at most "
                f"{limits.max_message} ([transfer] max_message)"
            )
        previous = self._by_topic.get(topic)
        if previous is not None:
            self._drop(previous, SupersededError.reason, "a newer manifest on its topic")
        left = limits.budget - self.open_bytes
        if manifest.total_size > left:
            raise OverBudgetError(
                f"{manifest.total_size} bytes announced, {left} left of the reassembly budget "
                f"([transfer] budget = {limits.budget})"
            )
        spool_dir = None if limits.spool_dir is None else str(limits.spool_dir)
        transfer = Transfer(
            topic,
            manifest,
            envelope,
            identity,
            now + limits.timeout,
            tempfile.TemporaryFile(dir=spool_dir),  # noqa: SIM115 - closed with the transfer
        )
        self._open[transfer.key] = transfer
        self._by_topic[topic] = transfer
        if self.credit is not None:
            self.credit.open(transfer.key, chunk_size=stride(manifest), count=count)
        log.debug(
            "transfer_started",
            topic=topic,
            sender=envelope.sender,
            kind=str(manifest.kind),
            size=manifest.total_size,
            chunks=count,
        )
        return transfer

    def add(self, topic: str, payload: bytes, *, now: float | None = None) -> Transfer | None:
        """Keep one chunk frame that came on ``topic``; its transfer, or None when the chunk
        was a duplicate. Once ``transfer.missing`` is 0 the transfer is complete and no longer
        open: the caller ``assemble``s (which closes it) or ``close``s it. (``check``, then
        ``keep``, then ``settle``, in one go.)

        Raises:
            DecodeError: not a chunk frame.
            UnknownTransferError: no transfer with its id is open on ``topic``.
            ChunkMismatchError: an index out of range or data not matching its hash.
        """
        pending = self.check(topic, payload, now=now)
        if pending is None:
            return None
        try:
            keep(pending)
        except BaseException:
            self.settle(pending, kept=False)
            raise
        return self.settle(pending, kept=True)

    def check(self, topic: str, payload: bytes, *, now: float | None = None) -> Pending | None:
        """The cheap checks of one chunk frame (its transfer open on ``topic``, its index in
        range, its size); None for a duplicate. The chunk is then in flight: a repeat of it
        is a duplicate until ``settle`` says whether it was kept. Raises what ``add`` raises
        but ``ChunkMismatchError`` for a hash (that is ``keep``'s)."""
        now = time.monotonic() if now is None else now
        transfer_id, index, data = parse_frame(payload)
        transfer = self._open.get((topic, transfer_id))
        if transfer is None and (topic, transfer_id) in self._done:
            return None  # a duplicate of a chunk of a message already delivered
        if transfer is None or now > transfer.deadline:
            self.expire(now)
            raise UnknownTransferError(f"no open transfer {transfer_id.hex()} on {topic}")
        manifest = transfer.manifest
        if index >= len(manifest.chunk_hashes):
            raise ChunkMismatchError(f"chunk {index} of {len(manifest.chunk_hashes)}")
        if transfer.received[index]:
            return None  # a duplicate of a chunk already kept (or being kept)
        want = (
            stride(manifest)
            - manifest.chunk_size
            + min(manifest.chunk_size, manifest.total_size - index * manifest.chunk_size)
        )
        if len(data) != want:
            raise ChunkMismatchError(f"chunk {index} holds {len(data)} bytes, not {want}")
        transfer.received[index] = IN_FLIGHT
        return Pending(transfer, index, data, len(payload))

    def is_open(self, transfer: Transfer) -> bool:
        """Whether ``transfer`` is still open (not complete, dropped or closed)."""
        return self._open.get(transfer.key) is transfer

    def settle(self, pending: Pending, *, kept: bool) -> Transfer | None:
        """Record whether ``keep`` kept ``pending``'s chunk (False: it may come again); its
        transfer (complete once ``missing`` is 0, as ``add``'s), or None when the transfer
        was dropped meanwhile (expired, superseded, closed)."""
        transfer, index = pending.transfer, pending.index
        if not self.is_open(transfer):
            return None
        if not kept:
            transfer.received[index] = 0
            return None
        transfer.received[index] = 1
        transfer.missing -= 1
        if self.credit is not None:
            self.credit.kept(transfer.key, len(transfer.received) - transfer.missing)
        if transfer.missing:
            return transfer
        self._forget(transfer)
        self._done.append(transfer.key)
        return transfer

    def due(self) -> list[Transfer]:
        """With flow control: the open transfers whose sender must be told a new grant
        (``Transfer.grant`` set to it; ``CreditPool.due``); empty without."""
        if self.credit is None:
            return []
        out = []
        for key in self.credit.due():
            transfer, grant = self._open.get(key), self.credit.get(key)
            if transfer is not None and grant is not None:
                transfer.grant = grant.announced
                out.append(transfer)
        return out

    def expire(self, now: float | None = None) -> None:
        """Drop every transfer past its deadline (``transfer_timeout``)."""
        now = time.monotonic() if now is None else now
        for transfer in [t for t in self._open.values() if now > t.deadline]:
            missing = transfer.missing
            self._drop(transfer, TransferTimeoutError.reason, f"{missing} chunks never came")

    def close(self) -> None:
        """Drop every open transfer (the receiver stops)."""
        for transfer in list(self._open.values()):
            self._forget(transfer)
            transfer.close()

    def _drop(self, transfer: Transfer, reason: str, detail: str) -> None:
        self._forget(transfer)
        transfer.close()
        log.warning(
            "message_dropped",
            reason=reason,
            topic=transfer.topic,
            sender=transfer.sender,
            kind=str(transfer.manifest.kind),
            size=transfer.manifest.total_size,
            detail=detail,
        )
        if self._on_drop is not None:
            self._on_drop(transfer.topic, reason, detail)

    def _forget(self, transfer: Transfer) -> None:
        if self.credit is not None:
            self.credit.close(transfer.key)
        self._open.pop(transfer.key, None)
        if self._by_topic.get(transfer.topic) is transfer:
            del self._by_topic[transfer.topic]
