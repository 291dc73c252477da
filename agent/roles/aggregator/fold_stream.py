"""Streaming FedAvg chunk by chunk: a plain update's values are folded into the running sum
(``fold.RunningMean``) as each chunk arrives, not once the whole update is in.

A chunked ``model_update`` is checked chunk by chunk against its signed manifest
(``agent.runtime.reassembly``), which also carries the body without its tensors' bytes
(the header: shapes, dtypes, num_examples, model version). So once the manifest is in, the
aggregator knows where every array lies in the bulk and the update's weight. The receive
loop only checks each chunk's hash and hands it to the transfer's sink, a ``FoldStream``;
in the sum's one folding thread (``RunningMean.submit``; at most ``QUEUED`` chunks queued,
each in its bus payload, then the receiving thread waits) each chunk is opened (when
sealed), spooled as plaintext at its place in the bulk (so the complete update is mapped
as before, ``agent.mapped``), and each averaged array's share of it is checked (every
value and its delta finite), measured (its Σ Δ² towards the delta's norm), folded (Σ +=
n · w, float64) and copied to the sum's spool (``RunningMean.fold_piece``). So the fold
overlaps with the transfer of the chunks still on their way, the updates of several
senders are folded as their chunks interleave, and only the last chunk's fold is left once
the update is in.

What needs the whole update comes when it is complete (``PlainRound.receive``): the
finite verdict and the delta's norm, for the cohort-relative bound at the round's close.
Half an update cannot be taken out of a float64 sum exactly, so a streamed update that is
refused (a value not finite) or never completes (cut off, superseded, the round closed)
leaves its values in the sum and marks it for rebuilding: at ``RunningMean.result`` the sum
is rebuilt from the spool over the kept updates, as for one above the relative bound. An
honest round reads nothing back.

Exactness: every element still gets the same exact products n_k · w_k (a float32 times an
integer below 2^29 is exact in float64), added in the order the senders' chunks came
rather than the order their updates completed; both orders are arrival orders. Where
those float64 additions are exact (values within ~2^29 of one another in magnitude) the
sum is bit-identical; otherwise it may differ in the last bit of float64. The norm's Σ Δ²
is summed per chunk share instead of per 2^18 values, so it may differ in its last bits.

Used only where a plain update is mapped (Linux) and its layout allows it: every
averaged array shaped and typed like the model in force's, starting at a multiple of its
item size, with a chunk size that is a multiple of 8 (no value split between two chunks);
and without an absolute norm bound (which must know the whole update's norm before
folding). Otherwise the update is folded whole once
complete, as before.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import weakref
from concurrent.futures import Future
from dataclasses import dataclass

import msgspec
import numpy as np
import structlog

from agent.errors import ChunkError, ProtocolError
from agent.messages.bodies import ModelUpdate
from agent.messages.chunks import open_chunk_into
from agent.plugin.api import Weights, is_averaged
from agent.roles.aggregator.fold import RunningMean
from agent.runtime.assembly import Transfer, is_mapped

log = structlog.get_logger(__name__)

_header = msgspec.msgpack.Decoder(ModelUpdate)
#: Chunks queued for a sum's folding thread at most: the receiving thread waits for a free
#: slot (backpressure). A queued chunk holds its bus payload (no copy: the payload is freed
#: once its chunk is folded), so the queue holds at most ``QUEUED`` chunks' bytes.
QUEUED = 16

_slots: weakref.WeakKeyDictionary[RunningMean, threading.BoundedSemaphore] = (
    weakref.WeakKeyDictionary()
)
_slots_lock = threading.Lock()


def _slots_of(mean: RunningMean) -> threading.BoundedSemaphore:
    """``mean``'s ``QUEUED`` queue slots, shared by its streams."""
    with _slots_lock:
        slots = _slots.get(mean)
        if slots is None:
            slots = _slots[mean] = threading.BoundedSemaphore(QUEUED)
        return slots


#: the folding threads' plaintext buffers (one chunk each, reused: no allocation per chunk)
_buffers = threading.local()


def _scratch(size: int) -> bytearray:
    """This thread's buffer of at least ``size`` bytes."""
    buffer: bytearray | None = getattr(_buffers, "buffer", None)
    if buffer is None or len(buffer) < size:
        buffer = _buffers.buffer = bytearray(size)
    return buffer


@dataclass(frozen=True, slots=True)
class Share:
    """Where one averaged array lies: in the bulk (``start``, ``nbytes``) and in the
    update's spool region (``spool``)."""

    array: int
    start: int
    nbytes: int
    dtype: np.dtype[np.floating]
    spool: int


def header(transfer: Transfer) -> ModelUpdate | None:
    """The update a ``model_update`` manifest announces, without its tensors' bytes; None
    when the header does not decode (the update is then refused whole at completion)."""
    try:
        return _header.decode(transfer.manifest.header)
    except (msgspec.DecodeError, UnicodeDecodeError, ValueError):
        return None


def layout(model: Weights, update: ModelUpdate, chunk_size: int) -> list[Share] | None:
    """The averaged arrays' places in ``update``'s bulk, or None when it cannot be folded
    chunk by chunk (see the module docstring)."""
    if chunk_size % 8 or len(update.tensors) != len(model):
        return None
    shares, offset, spool = [], 0, 0
    for i, (tensor, base) in enumerate(zip(update.tensors, model, strict=True)):
        try:
            dtype = np.dtype(tensor.dtype)
        except TypeError:
            return None
        if tuple(tensor.shape) != base.shape or dtype != base.dtype:
            return None
        nbytes = math.prod(tensor.shape) * dtype.itemsize
        if is_averaged(base):
            if offset % dtype.itemsize:
                return None
            shares.append(Share(i, offset, nbytes, dtype, spool))
            spool += nbytes
        offset += nbytes
    return shares


class FoldStream:
    """One update's chunks spooled and folded as they are kept (a ``ChunkSink``; see the
    module docstring). Built by ``open_stream``.

    Attributes:
        agent_id: the sender.
        weight: the update's weight, min(num_examples, max_weight), ≥ 1.
        message_id: the manifest's message id (the completed message's).
    """

    def __init__(
        self, mean: RunningMean, transfer: Transfer, shares: list[Share], weight: int
    ) -> None:
        manifest = transfer.manifest
        self.agent_id = transfer.sender
        self.weight = weight
        self.message_id = transfer.envelope.message_id
        self._mean = mean
        self._slots = _slots_of(mean)
        self._shares = shares
        self._key, self._transfer = manifest.content_key, manifest.transfer
        self._chunk, self._total = manifest.chunk_size, manifest.total_size
        self._count = len(manifest.chunk_hashes)
        self._fd: int | None = os.dup(transfer.spool.fileno())  # the spool outlives the transfer
        self._offset = mean.reserve(sum(s.nbytes for s in shares), self._close_fd)
        self._squares = 0.0
        self._spooled = self._folded = 0
        #: why a chunk was not spooled (it did not open, a disk error), raised by ``flush``
        self._error: ProtocolError | None = None
        self._refused = False  # a value not finite, or a chunk not spooled
        self._last: Future[None] | None = None

    @property
    def folded(self) -> int:
        """Chunks folded so far."""
        return self._folded

    def kept(self, transfer: Transfer, index: int, data: memoryview) -> None:
        """Queue chunk ``index`` for the folding thread (``ChunkSink``); waits while
        ``QUEUED`` chunks are queued already."""
        del transfer
        self._slots.acquire()
        future = self._mean.submit(lambda: self._take(index, data))
        if future is None:  # closed: nothing will run
            self._slots.release()
        self._last = future or self._last

    def flush(self, transfer: Transfer) -> None:
        """Block until every queued chunk is spooled (``ChunkSink``).

        Raises:
            SealError: a chunk did not open.
            ChunkError: a chunk was not spooled (a disk error, or the round closed).
        """
        del transfer
        if self._last is not None:
            self._last.result()
        if self._error is not None:
            raise self._error
        if self._spooled != self._count:
            raise ChunkError(f"{self._count - self._spooled} chunks were not spooled")

    async def finish(self) -> float | None:
        """Once every queued chunk is folded: ‖Δ_k‖₂ over the averaged arrays, or None when
        a value was not finite or a chunk was not folded (the sum is then rebuilt without
        it at the round's close)."""
        if self._last is not None:
            await asyncio.wrap_future(self._last)
        if self._refused or self._folded != self._count:
            return None
        norm = math.sqrt(self._squares)
        self._mean.commit(self, self.agent_id, norm, self.weight, self._offset)
        return norm

    def _take(self, index: int, data: memoryview) -> None:
        """In the folding thread, holding the sum's lock: open, spool and fold one chunk
        (its queue slot freed after)."""
        try:
            self._take_one(index, data)
        finally:
            self._slots.release()

    def _take_one(self, index: int, data: memoryview) -> None:
        if self._mean.sealed or self._fd is None:
            return
        try:
            plain = data
            if self._key is not None:
                plain = open_chunk_into(
                    self._key, self._transfer, index, self._count, data, _scratch(len(data))
                )
            if os.pwrite(self._fd, plain, index * self._chunk) != len(plain):
                raise ChunkError(f"chunk {index} could not be spooled")
        except ProtocolError as exc:
            self._error, self._refused = exc, True
            self._mean.dirty = True
            return
        except OSError as exc:
            log.warning("chunk_spool_failed", agent=self.agent_id, chunk=index, error=repr(exc))
            self._error, self._refused = ChunkError(f"chunk {index}: {exc}"), True
            self._mean.dirty = True
            return
        self._spooled += 1
        if not self._refused:
            self._fold(index, plain)
        if self._spooled == self._count:
            self._close_fd()

    def _fold(self, index: int, plain: memoryview) -> None:
        start = index * self._chunk
        end = start + len(plain)
        n = float(self.weight)
        for share in self._shares:
            lo, hi = max(start, share.start), min(end, share.start + share.nbytes)
            if lo >= hi:
                continue
            size = share.dtype.itemsize
            values = np.frombuffer(plain, share.dtype, count=(hi - lo) // size, offset=lo - start)
            at = self._offset + share.spool + (lo - share.start)
            squares = self._mean.fold_piece(
                self, share.array, (lo - share.start) // size, values, n, at
            )
            if squares is None:
                self._refused = True
                return
            self._squares += squares
        self._folded += 1

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def open_stream(
    mean: RunningMean, transfer: Transfer, model: Weights, update: ModelUpdate, weight: int
) -> FoldStream | None:
    """A ``FoldStream`` for ``transfer`` (a ``model_update`` announcing ``update``, weight
    ``weight``) into ``mean``, or None when it is folded whole at completion instead."""
    if not mean.streams or not is_mapped(transfer.manifest):
        return None
    shares = layout(model, update, transfer.manifest.chunk_size)
    if shares is None:
        return None
    return FoldStream(mean, transfer, shares, weight)
