"""Streaming FedAvg: each plain update is folded into one running weighted sum on arrival.

The aggregator then holds O(model size) whatever the cohort size: the sum Σ n_k (w_k - x)
(float64, shaped like the model), the total weight and each survivor's metrics, never the
survivors' weights. The result is ``strategy.update.mean_update``'s, accumulated in another
order (McMahan et al. 2017, Algorithm 1's weighting). An update is folded whole, once it is
verified (every chunk checked and the whole hash matched, ``agent.runtime.reassembly``):
a transfer cut off half way is a dropout, and half an update cannot be taken back out.

Aggregators that need every update at once (median, Krum) keep ``PlainRound``'s results
instead (``PlainRound(fold=None)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from agent.errors import RoundError
from agent.plugin.api import Weights
from agent.strategy.update import AggregatedUpdate, ClientResult, Delta, weighted_mean

#: Values folded per step: bounds the float64 temporaries to a few MiB whatever the layer size.
STEP = 1 << 18


class RunningMean:
    """Σ n_k w_k over the updates added, and Σ n_k; the mean delta is Σ n_k w_k / Σ n_k
    minus ``current``, the same as Σ n_k (w_k - current) / Σ n_k.

    Args:
        current: the model in force (the deltas' base), float arrays of any dtype.
    """

    def __init__(self, current: Weights) -> None:
        self._current = current
        self._sum: Delta = [np.zeros(a.shape, np.float64) for a in current]
        self._scratch = np.empty(STEP, np.float64)
        self.total = 0

    def add(self, weights: Weights, num_examples: int) -> None:
        """Fold one verified update (shaped like ``current``) with weight ``num_examples``:
        two passes over it, in float64, with no temporary larger than ``STEP`` values."""
        n = float(num_examples)
        for acc, w in zip(self._sum, weights, strict=True):
            flat_acc, flat_w = acc.reshape(-1), w.reshape(-1)
            for start in range(0, flat_acc.size, STEP):
                end = min(start + STEP, flat_acc.size)
                piece = self._scratch[: end - start]
                np.multiply(flat_w[start:end], n, out=piece, dtype=np.float64)
                np.add(flat_acc[start:end], piece, out=flat_acc[start:end])
        self.total += num_examples

    def result(self, results: Sequence[ClientResult]) -> AggregatedUpdate:
        """The mean delta Σ n_k Δ_k / Σ n_k (in place: the sum is spent), with the weighted
        ``train_loss`` of ``results`` (the survivors, whose weights may be empty).

        Raises:
            RoundError: nothing was added, or Σ num_examples ≤ 0.
        """
        if not results or self.total <= 0:
            raise RoundError("no update with num_examples > 0 to aggregate")
        for acc, base in zip(self._sum, self._current, strict=True):
            np.divide(acc, self.total, out=acc)
            np.subtract(acc, base, out=acc, dtype=np.float64)
        metrics: dict[str, float] = {}
        loss = weighted_mean(
            [
                (float(v), r.num_examples)
                for r in results
                if isinstance(v := r.metrics.get("train_loss"), int | float)
            ]
        )
        if not math.isnan(loss):
            metrics["train_loss"] = loss
        survivors = tuple(sorted(r.agent_id for r in results))
        return AggregatedUpdate(self._sum, self.total, survivors, metrics)
