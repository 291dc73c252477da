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
    """Σ n_k (w_k - current) over the updates added, and Σ n_k.

    Args:
        current: the model in force (the deltas' base), float arrays of any dtype.
    """

    def __init__(self, current: Weights) -> None:
        self._current = current
        self._sum: Delta = [np.zeros(a.shape, np.float64) for a in current]
        self.total = 0

    def add(self, weights: Weights, num_examples: int) -> None:
        """Fold one verified update (shaped like ``current``) with weight ``num_examples``."""
        n = float(num_examples)
        for acc, w, base in zip(self._sum, weights, self._current, strict=True):
            flat_acc, flat_w, flat_base = acc.reshape(-1), w.reshape(-1), base.reshape(-1)
            for start in range(0, flat_acc.size, STEP):
                end = start + STEP
                piece = flat_w[start:end].astype(np.float64)
                piece -= flat_base[start:end]
                piece *= n
                flat_acc[start:end] += piece
        self.total += num_examples

    def result(self, results: Sequence[ClientResult]) -> AggregatedUpdate:
        """The mean delta Σ n_k Δ_k / Σ n_k (in place: the sum is spent), with the weighted
        ``train_loss`` of ``results`` (the survivors, whose weights may be empty).

        Raises:
            RoundError: nothing was added, or Σ num_examples ≤ 0.
        """
        if not results or self.total <= 0:
            raise RoundError("no update with num_examples > 0 to aggregate")
        for acc in self._sum:
            np.divide(acc, self.total, out=acc)
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
