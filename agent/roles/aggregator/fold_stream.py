"""Streaming FedAvg chunk by chunk: a plain update's values are folded into the running sum
(``fold.RunningMean``) as each chunk arrives, not once the whole update is in.

A chunked ``model_update`` is checked chunk by chunk against its signed manifest
(``agent.runtime.reassembly``), which also carries the body without its tensors' bytes (the
header: shapes, dtypes, num_examples, model version). So once the manifest is in, the
aggregator knows where every array lies in the bulk and the update's weight. Each chunk
kept (and opened, when sealed: ``assembly.opened_on_arrival``) is read back from the
transfer's spool, in the sum's one folding thread (``RunningMean.submit``), and each
averaged array's share of it is checked (every value and its delta finite), measured (its
Σ Δ² towards the delta's norm) and folded (Σ += n · w, float64) and copied to the sum's
spool (``RunningMean.fold_piece``). The receive loop only checks and spools; the fold
overlaps with the transfer of the chunks still on their way, and the updates of several
senders are folded as their chunks interleave.

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

Used only when the layout allows it: every averaged array shaped and typed like the model
in force's, starting at a multiple of its item size, with a chunk size that is a multiple
of 8 (no value split between two chunks); and without an absolute norm bound (which must
know the whole update's norm before folding). Otherwise the update is folded whole once
complete, as before.
"""

from __future__ import annotations

import asyncio
import math
import os
from concurrent.futures import Future
from dataclasses import dataclass

import msgspec
import numpy as np
import structlog

from agent.messages.bodies import ModelUpdate
from agent.plugin.api import Weights, is_averaged
from agent.roles.aggregator.fold import RunningMean
from agent.runtime.assembly import Transfer, opened_on_arrival

log = structlog.get_logger(__name__)

_header = msgspec.msgpack.Decoder(ModelUpdate)


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
    """One update's chunks folded as they are kept (a ``ChunkSink``; see the module
    docstring). Built by ``open_stream``.

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
        self._shares = shares
        self._chunk, self._total = manifest.chunk_size, manifest.total_size
        self._count = len(manifest.chunk_hashes)
        self._fd: int | None = os.dup(transfer.spool.fileno())  # the spool outlives the transfer
        self._offset = mean.reserve(sum(s.nbytes for s in shares), self._close_fd)
        self._squares = 0.0
        self._folded = 0
        self._refused = False
        self._last: Future[None] | None = None

    def kept(self, transfer: Transfer, index: int) -> None:
        """Queue chunk ``index`` for the folding thread (``ChunkSink``)."""
        del transfer
        self._last = self._mean.submit(lambda: self._fold(index)) or self._last

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

    def _fold(self, index: int) -> None:
        mean = self._mean
        with mean.lock:
            if mean.sealed or self._refused or self._fd is None:
                return
            try:
                self._fold_chunk(index, self._fd)
            except Exception:  # a disk error: the update is refused, the sum rebuilt
                log.exception("chunk_fold_failed", agent=self.agent_id, chunk=index)
                self._refused = True
                mean.fold_failed()

    def _fold_chunk(self, index: int, fd: int) -> None:
        start = index * self._chunk
        end = min(start + self._chunk, self._total)
        raw = os.pread(fd, end - start, start)
        if len(raw) != end - start:
            raise OSError(f"chunk {index} is short in the spool")
        n = float(self.weight)
        for share in self._shares:
            lo, hi = max(start, share.start), min(end, share.start + share.nbytes)
            if lo >= hi:
                continue
            size = share.dtype.itemsize
            values = np.frombuffer(raw, share.dtype, count=(hi - lo) // size, offset=lo - start)
            at = self._offset + share.spool + (lo - share.start)
            squares = self._mean.fold_piece(
                self, share.array, (lo - share.start) // size, values, n, at
            )
            if squares is None:
                self._refused = True
                return
            self._squares += squares
        self._folded += 1
        if self._folded == self._count:
            self._close_fd()

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def open_stream(
    mean: RunningMean, transfer: Transfer, model: Weights, update: ModelUpdate, weight: int
) -> FoldStream | None:
    """A ``FoldStream`` for ``transfer`` (a ``model_update`` announcing ``update``, weight
    ``weight``) into ``mean``, or None when it is folded whole at completion instead."""
    if not mean.streams or not opened_on_arrival(transfer.manifest):
        return None
    shares = layout(model, update, transfer.manifest.chunk_size)
    if shares is None:
        return None
    return FoldStream(mean, transfer, shares, weight)
