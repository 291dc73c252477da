"""Robust aggregation rules for plain rounds: what the mean delta Δ is when some updates may
be an attacker's. Each takes the survivors' deltas (float64 arrays shaped like the model) and
their weights, and returns one delta of the same shapes.

=================  ============================================  ==============  ===========
rule               source                                        time            memory
=================  ============================================  ==============  ===========
``median``         Yin et al., "Byzantine-Robust Distributed     O(n·d)          O(n·d)
                   Learning: Towards Optimal Statistical Rates",
                   ICML 2018, §3 (coordinate-wise median)
``trimmed_mean``   Yin et al. 2018, §4 (coordinate-wise          O(n·d·log n)    O(n·d)
                   β-trimmed mean)
``multi_krum``     Blanchard et al., "Machine Learning with      O(n²·d)         O(n·d + n²)
                   Adversaries: Byzantine Tolerant Gradient
                   Descent", NeurIPS 2017, §4 (Multi-Krum)
=================  ============================================  ==============  ===========

n updates of d parameters. All three need every update in memory at once (the plain mean
needs only a running sum), and none works under SecAgg+, which reveals only the sum. The
median and the trimmed mean ignore the weights (one device, one vote: a capped weight cannot
buy more); Multi-Krum averages the m selected updates weighted by their (capped) weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from agent.errors import RoundError
from agent.robust.bounds import Delta
from agent.robust.settings import Aggregation, RobustConfig

Matrix = npt.NDArray[np.float64]


def robust_mean(deltas: Sequence[Delta], weights: Sequence[int], settings: RobustConfig) -> Delta:
    """The rule ``settings.aggregation`` names over ``deltas`` (``mean``: weighted mean).

    Args:
        deltas: n ≥ 1 deltas, all shaped like the model.
        weights: their weights (≥ 1 each).

    Raises:
        RoundError: no delta.
    """
    if not deltas:
        raise RoundError("no update to aggregate")
    stacked = _stack(deltas)
    rule = settings.aggregation
    if rule is Aggregation.MEDIAN:
        flat = np.median(stacked, axis=0)
    elif rule is Aggregation.TRIMMED_MEAN:
        flat = trimmed_mean(stacked, settings.trim_fraction)
    elif rule is Aggregation.MULTI_KRUM:
        chosen = multi_krum(stacked, f=settings.byzantine, m=settings.krum_select)
        flat = _weighted(stacked[chosen], [weights[i] for i in chosen])
    else:
        flat = _weighted(stacked, weights)
    return _unstack(flat, deltas[0])


def trimmed_mean(stacked: Matrix, beta: float) -> Matrix:
    """Per coordinate, the mean of the values left after cutting the ⌊β·n⌋ smallest and the
    ⌊β·n⌋ largest (β ∈ [0, 0.5); shape (n, d) → (d,))."""
    n = stacked.shape[0]
    cut = min(math.floor(beta * n), (n - 1) // 2)
    if cut == 0:
        return np.asarray(stacked.mean(axis=0), np.float64)
    ordered = np.sort(stacked, axis=0)
    return np.asarray(ordered[cut : n - cut].mean(axis=0), np.float64)


def multi_krum(stacked: Matrix, *, f: int, m: int = 0) -> list[int]:
    """The indices (sorted) of the m updates with the lowest Krum scores: score(i) = Σ of
    the squared distances from i to its n - f - 2 nearest other updates (Blanchard et al.
    2017, §4). m = 0 means n - f. With n ≤ 2f + 2 the guarantee does not hold; the score then
    uses at least the single nearest neighbour."""
    n = stacked.shape[0]
    m = m or max(1, n - f)
    m = min(m, n)
    if n == 1:
        return [0]
    sq = np.einsum("ij,ij->i", stacked, stacked)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (stacked @ stacked.T), 0.0)
    np.fill_diagonal(dist, np.inf)
    k = max(1, min(n - f - 2, n - 1))
    nearest = np.sort(dist, axis=1)[:, :k]
    scores = nearest.sum(axis=1)
    return sorted(int(i) for i in np.argsort(scores, kind="stable")[:m])


def _weighted(stacked: Matrix, weights: Sequence[int]) -> Matrix:
    w = np.asarray(weights, np.float64)
    return np.asarray((w[:, None] * stacked).sum(axis=0) / w.sum(), np.float64)


def _stack(deltas: Sequence[Delta]) -> Matrix:
    return np.stack([np.concatenate([a.ravel() for a in d]) for d in deltas]).astype(
        np.float64, copy=False
    )


def _unstack(flat: Matrix, like: Delta) -> Delta:
    out: Delta = []
    offset = 0
    for ref in like:
        out.append(np.asarray(flat[offset : offset + ref.size], np.float64).reshape(ref.shape))
        offset += ref.size
    return out
