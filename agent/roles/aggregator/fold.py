"""Streaming FedAvg: each plain update is folded into one running weighted sum on arrival.

The aggregator then holds O(model size) whatever the cohort size: the sum Σ n_k (w_k - x)
(float64, shaped like the model), the total weight and each survivor's metrics, never the
survivors' weights. The result is ``strategy.update.mean_update``'s, accumulated in another
order (McMahan et al. 2017, Algorithm 1's weighting). A chunked update is folded chunk by
chunk as it arrives (``fold_stream``: ``fold_piece``, in one thread) where it can be, else
whole once complete (``add``, through a mapping of its spool, ``agent.mapped``, each
array's pages let go once folded). ``result``'s delta is spendable: FedAvg's step lets
each of its arrays go once added to the new model.

The cohort-relative norm bound (``[aggregator.robust] norm_factor``, ARCHITECTURE.md §12)
needs the round's median norm, known only when the round closes. So each update is folded
at once anyway, its delta's norm taken in the same pass, and its values written to an
unlinked spool file (disk, not memory: ``n x model bytes`` of it, gone with the round). When an
update is above ``norm_factor`` times the median at the close, the sum is rebuilt from the
spool, Σ = Σ_kept n_k (x + s_k Δ_k) with s_k = min(1, bound / ‖Δ_k‖) (0 for a dropped
one): subtracting the outlier back out of the running sum instead would lose the others to
float64 cancellation (one update of 3e38 leaves nothing of the honest ones, and the mean
becomes -x: a zeroed model). The result equals ``robust_fit.robust_update``'s with the mean,
up to rounding (that path rounds a clipped update to the model's dtype); an honest round (no
update above the bound) reads nothing back.

Aggregators that need every update at once (median, Krum) keep ``PlainRound``'s results
instead (``PlainRound(fold=None)``).
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from agent.errors import RoundError
from agent.mapped import release
from agent.plugin.api import Weights, is_averaged
from agent.robust.bounds import relative_bound, sum_squares
from agent.robust.settings import OnViolation, RobustConfig
from agent.strategy.update import AggregatedUpdate, ClientResult, Delta, weighted_metrics

#: Values folded per step: bounds the float64 temporaries to a few MiB whatever the layer size.
STEP = 1 << 18

log = structlog.get_logger(__name__)


class RunningMean:
    """Σ n_k w_k over the updates added, and Σ n_k; the mean delta is Σ n_k w_k / Σ n_k
    minus ``current``, the same as Σ n_k (w_k - current) / Σ n_k. Only the averaged
    (floating-point) arrays are summed; the carried integer arrays get a zero delta, as in
    ``strategy.update.model_delta``.

    Args:
        current: the model in force (the deltas' base), arrays of any dtype.
        robust: with ``norm_factor`` > 0, the cohort-relative norm bound is applied at
            ``result`` (see the module docstring; updates are spooled to ``spool_dir``).
        spool_dir: where the spool goes (None: the system's temporary directory).
    """

    def __init__(
        self,
        current: Weights,
        *,
        robust: RobustConfig | None = None,
        spool_dir: Path | None = None,
    ) -> None:
        self._current = current
        self._sum: Delta = [np.zeros(a.shape, np.float64) for a in current]
        self._averaged = [is_averaged(a) for a in current]
        self._scratch = np.empty(STEP, np.float64)
        self._delta = np.empty(STEP, np.float64)
        self.total = 0
        factor = 0.0 if robust is None else robust.norm_factor
        self._factor, self._on_norm = factor, OnViolation.CLIP if robust is None else robust.on_norm
        self._spool = tempfile.TemporaryFile(dir=spool_dir) if factor > 0 else None  # noqa: SIM115
        #: agent id → (‖Δ_k‖₂ of the averaged arrays, weight, offset in the spool)
        self.norms: dict[str, tuple[float, int, int]] = {}
        self._end = 0
        #: held while the sum or the spool changes (chunk folds run in ``_worker``'s thread)
        self.lock = threading.Lock()
        #: no chunk is folded once set (``result``, ``close``)
        self.sealed = False
        #: chunk streams that folded something and were not committed (``fold_stream``)
        self._pending: set[object] = set()
        #: a stream folded values that must not count (refused, cut off): rebuild at result
        self.dirty = False
        self._worker: ThreadPoolExecutor | None = None
        self._submitting = threading.Lock()  # held while ``_worker`` changes or is used
        self._on_close: list[Callable[[], None]] = []
        self._absolute = 0.0 if robust is None else robust.max_update_norm

    def add(
        self,
        weights: Weights,
        num_examples: int,
        *,
        agent_id: str = "",
        norm: float | None = None,
    ) -> None:
        """Fold one verified update (shaped like ``current``) with weight ``num_examples``:
        one pass over it, in float64, with no temporary larger than ``STEP`` values; with the
        relative bound on, its values are spooled in that pass and its delta's norm (over
        the floating-point arrays) is ``norm`` or, None, taken in that pass too."""
        with self.lock:
            self._add(weights, num_examples, agent_id, norm)

    def _add(self, weights: Weights, num_examples: int, agent_id: str, norm: float | None) -> None:
        n = float(num_examples)
        spool, squares, offset = self._spool, 0.0, self._end
        measure = spool is not None and norm is None
        for acc, w, base, averaged in zip(
            self._sum, weights, self._current, self._averaged, strict=True
        ):
            if not averaged:
                continue
            flat_acc, flat_w, flat_x = acc.reshape(-1), w.reshape(-1), base.reshape(-1)
            for start in range(0, flat_acc.size, STEP):
                end = min(start + STEP, flat_acc.size)
                piece = self._scratch[: end - start]
                np.multiply(flat_w[start:end], n, out=piece, dtype=np.float64)
                np.add(flat_acc[start:end], piece, out=flat_acc[start:end])
                if measure:
                    delta = self._delta[: end - start]
                    np.subtract(flat_w[start:end], flat_x[start:end], out=delta, dtype=np.float64)
                    squares += sum_squares(delta)
            if spool is not None:
                self._end += _write(spool.fileno(), np.ascontiguousarray(w), self._end)
            release(w)  # a mapped update's pages, once folded (agent.mapped)
        if spool is not None:
            taken = math.sqrt(squares) if norm is None else norm
            self.norms[agent_id] = (taken, num_examples, offset)
        self.total += num_examples

    def result(self, results: Sequence[ClientResult]) -> AggregatedUpdate | None:
        """The mean delta Σ n_k Δ_k / Σ n_k (in place: the sum is spent), with every fit
        metric's weighted mean over ``results`` (the survivors, whose weights may be empty),
        after the relative norm bound; None when that bound dropped every update.

        Raises:
            RoundError: nothing was added, or Σ num_examples ≤ 0.
        """
        try:
            with self.lock:  # no chunk folds from here on
                self.sealed = True
            results = self._within_relative_bound(results)
        finally:
            self._shut()
        if not results:
            self._sum, self._current = [], []
            return None
        if self.total <= 0:
            raise RoundError("no update with num_examples > 0 to aggregate")
        for acc, base, averaged in zip(self._sum, self._current, self._averaged, strict=True):
            if not averaged:
                continue
            np.divide(acc, self.total, out=acc)
            np.subtract(acc, base, out=acc, dtype=np.float64)
        metrics = weighted_metrics([(r.metrics, r.num_examples) for r in results])
        survivors = tuple(sorted(r.agent_id for r in results))
        # the sum is this step's alone: FedAvg's step lets each array go once added; the
        # model in force is not held from here (a stream may outlive the round: 200 MB more
        # at 50M plain into the next round, measured)
        self._current = []
        return AggregatedUpdate(self._sum, self.total, survivors, metrics, spendable=True)

    def close(self) -> None:
        """Close the spool, stop folding chunks and let go of the sum and the model (``result``
        does all but the sum; a round that ends without one must)."""
        self._shut()
        self._sum, self._current = [], []

    def _shut(self) -> None:
        with self.lock:
            self.sealed = True
            for done in self._on_close:
                done()
            self._on_close.clear()
            if self._spool is not None:
                self._spool.close()
            with self._submitting:
                worker, self._worker = self._worker, None
        if worker is not None:
            worker.shutdown(wait=False)  # what is queued returns at once: sealed

    # -- folding chunk by chunk (``fold_stream``) ---------------------------------------

    @property
    def streams(self) -> bool:
        """Whether updates may be folded chunk by chunk as they arrive: the relative bound's
        spool is there to rebuild the sum without one that is refused or cut off, and no
        absolute bound needs the whole update's norm before it is folded."""
        return self._spool is not None and self._absolute <= 0 and not self.sealed

    def reserve(self, nbytes: int, on_close: Callable[[], None]) -> int:
        """Room for one streamed update's averaged values in the spool: its offset;
        ``on_close`` is called when this sum closes (under ``lock``)."""
        with self.lock:
            offset, self._end = self._end, self._end + nbytes
            self._on_close.append(on_close)
        return offset

    def submit(self, fn: Callable[[], None]) -> Future[None] | None:
        """Run ``fn`` holding ``lock`` in the one thread that folds chunks, after those
        submitted before; None once closed (nothing runs). Never waits for a fold."""
        with self._submitting:
            if self.sealed:
                return None
            if self._worker is None:
                self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fold")
            return self._worker.submit(self._locked, fn)

    def _locked(self, fn: Callable[[], None]) -> None:
        with self.lock:
            fn()

    def fold_piece(
        self, stream: object, array: int, start: int, values: npt.NDArray[Any], n: float, at: int
    ) -> float | None:
        """Σ[array][start : start + len(values)] += n · values (float64), the values spooled
        at ``at``: one chunk's share of one averaged array of ``stream``'s update; the caller
        holds ``lock`` and checked ``sealed``. Its Σ (values - current)² , or None (nothing
        folded, the sum marked for rebuilding) when a value or its delta is not finite."""
        assert self._spool is not None
        flat_acc = self._sum[array].reshape(-1)
        flat_x = self._current[array].reshape(-1)
        squares = 0.0
        with np.errstate(all="ignore"):
            for lo in range(0, values.size, STEP):
                hi = min(lo + STEP, values.size)
                delta = self._delta[: hi - lo]
                np.subtract(
                    values[lo:hi], flat_x[start + lo : start + hi], out=delta, dtype=np.float64
                )
                squares += sum_squares(delta)
        if not math.isfinite(squares):
            self.dirty = True
            return None
        for lo in range(0, values.size, STEP):
            hi = min(lo + STEP, values.size)
            piece = self._scratch[: hi - lo]
            np.multiply(values[lo:hi], n, out=piece, dtype=np.float64)
            np.add(flat_acc[start + lo : start + hi], piece, out=flat_acc[start + lo : start + hi])
        self._pending.add(stream)
        _write(self._spool.fileno(), values, at)
        return squares

    def commit(self, stream: object, agent_id: str, norm: float, weight: int, offset: int) -> None:
        """``stream``'s update, every chunk folded, counts: weight ``weight``, its delta's
        norm ``norm`` and its values at ``offset`` in the spool."""
        with self.lock:
            self._pending.discard(stream)
            self.norms[agent_id] = (norm, weight, offset)
            self.total += weight

    def _within_relative_bound(self, results: Sequence[ClientResult]) -> list[ClientResult]:
        """``results`` less the updates the relative bound dropped; with any update above
        the bound, the sum rebuilt from the spool (``robust_fit._within_relative_bound``'s
        rule, streamed)."""
        if not results:
            raise RoundError("no update with num_examples > 0 to aggregate")
        if self._spool is None:
            return list(results)
        # folded values that must not count: a streamed update refused or cut off half
        # way, or an update folded whole and then taken out (its agent revoked)
        stale = (
            self.dirty
            or bool(self._pending)
            or bool(self.norms.keys() - {r.agent_id for r in results})
        )
        bound = relative_bound([self.norms[r.agent_id][0] for r in results], self._factor)
        kept: list[ClientResult] = []
        scales: list[float] = []
        for r in results:
            norm = self.norms[r.agent_id][0]
            if bound is None or norm <= bound:
                kept.append(r)
                scales.append(1.0)
            elif self._on_norm is OnViolation.REJECT:
                log.warning(
                    "update_rejected",
                    agent=r.agent_id,
                    reason="norm_above_bound",
                    detail=f"update norm {norm:.4g} > bound {bound:.4g}",
                )
            else:
                log.info("update_bounded", agent=r.agent_id, norm=round(norm, 6), clipped=True)
                kept.append(r)
                scales.append(bound / norm)
        if stale or len(kept) < len(results) or any(s < 1.0 for s in scales):
            self._rebuild(kept, scales)
        return kept

    def _rebuild(self, kept: Sequence[ClientResult], scales: Sequence[float]) -> None:
        """Σ = Σ_k n_k (x + s_k (w_k - x)) over ``kept`` (``scales``: their s_k), from the
        spool: Σ n_k s_k Δ_k first, then total · x, so no outlier is ever subtracted back
        out of a sum it dominates."""
        for acc in self._sum:
            acc.fill(0.0)
        self.total = 0
        for r, s in zip(kept, scales, strict=True):
            _, weight, offset = self.norms[r.agent_id]
            self._add_delta(offset, float(weight) * s)
            self.total += weight
        total = float(self.total)
        for acc, base, averaged in zip(self._sum, self._current, self._averaged, strict=True):
            if not averaged:
                continue
            flat_acc, flat_x = acc.reshape(-1), base.reshape(-1)
            for start in range(0, flat_acc.size, STEP):
                end = min(start + STEP, flat_acc.size)
                piece = self._scratch[: end - start]
                np.multiply(flat_x[start:end], total, out=piece, dtype=np.float64)
                np.add(flat_acc[start:end], piece, out=flat_acc[start:end])

    def _add_delta(self, offset: int, scale: float) -> None:
        """Σ += scale · (w_k - current), w_k read back from the spool at ``offset``, ``STEP``
        values at a time."""
        assert self._spool is not None
        fd = self._spool.fileno()
        for acc, base, averaged in zip(self._sum, self._current, self._averaged, strict=True):
            if not averaged:
                continue
            flat_acc, flat_x = acc.reshape(-1), base.reshape(-1)
            itemsize = base.dtype.itemsize
            for start in range(0, flat_acc.size, STEP):
                end = min(start + STEP, flat_acc.size)
                raw = os.pread(fd, (end - start) * itemsize, offset + start * itemsize)
                piece = np.frombuffer(raw, base.dtype).astype(np.float64)
                piece -= flat_x[start:end]
                piece *= scale
                flat_acc[start:end] += piece
            offset += flat_acc.size * itemsize


def _write(fd: int, array: npt.NDArray[Any], offset: int) -> int:
    """Write ``array``'s bytes at ``offset``; the bytes written."""
    view = array.reshape(-1).view(np.uint8).data
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)
    return done
