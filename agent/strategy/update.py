"""What a round hands the strategy: the survivors' aggregated model delta.

Both fit paths end here. In the clear the aggregator sees every survivor's weights and
computes the num_examples-weighted mean of their deltas (``mean_update``); under SecAgg+ it
learns only that mean, unmasked (``agent.secagg.server``), and cuts it back into arrays
(``split``). Either way the strategy gets one ``AggregatedUpdate``. The delta of one trainer
is ``model_delta`` on both paths (the trainer masks it, the aggregator averages it).

Only floating-point arrays are averaged (``is_averaged``). Integer and boolean arrays (a
BatchNorm's int64 ``num_batches_tracked``, a token count, a mask) are *carried*: their delta
is zero on both paths, they are left out of the SecAgg+ vector (``masked_values``: d counts
only float values, so they are never clipped, quantized or masked), and the model in force
keeps them bit-exact in their own dtype (``agent.strategy.base.moved``). Averaging a counter
as a float and truncating it back would be meaningless; masking it would clip it to the
clipping range. In the clear, after the step, the new model takes the survivors' median of
them (``agent.strategy.carried``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.errors import RoundError
from agent.plugin.api import Scalar, Weights, is_averaged

#: A model delta: float64 arrays shaped like the model's arrays, in the model's order.
Delta = list[npt.NDArray[np.float64]]


@dataclass(frozen=True, slots=True)
class ClientResult:
    """One survivor's contribution to a plain round: its trained weights (shaped and typed
    like the model in force), its num_examples, and the metrics its plugin reported."""

    agent_id: str
    weights: Weights
    num_examples: int
    metrics: dict[str, Scalar]


@dataclass(frozen=True, slots=True)
class AggregatedUpdate:
    """The survivors' aggregate, the one input of ``Strategy.step``.

    Attributes:
        delta: Δ, the num_examples-weighted mean of (trained weights - model in force):
            float64 arrays shaped like the model (Reddi et al. 2021, Algorithm 2's Δ_t,
            the negated pseudo-gradient).
        total_weight: Σ num_examples over the survivors (under SecAgg+ each counts ≥ 1).
        survivors: the agent ids whose results are in ``delta``, sorted.
        metrics: num_examples-weighted means of the survivors' fit metrics, each over the
            survivors that reported it as a finite number (under SecAgg+: the secure
            metrics, learnt only as the cohort's sums, ``agent.privacy.secure_metrics``).
        spendable: the step may let each array of ``delta`` go once it is added to the
            model (``strategy.base.moved``: ``delta`` is then a list of empty arrays), so a
            model-sized float64 delta is not held beside the whole new model; set by whoever
            built ``delta`` for that step alone (``roles.aggregator.fold``).
    """

    delta: Delta
    total_weight: int
    survivors: tuple[str, ...]
    metrics: dict[str, float] = field(default_factory=dict)
    spendable: bool = False

    @property
    def train_loss(self) -> float:
        """The weighted mean ``train_loss`` of the survivors; NaN when not known."""
        return self.metrics.get("train_loss", math.nan)


def averaged_size(like: Sequence[npt.NDArray[Any]]) -> int:
    """d: the number of values SecAgg+ masks, the sizes of the averaged arrays summed."""
    return sum(int(a.size) for a in like if is_averaged(a))


def masked_values(delta: Delta, like: Sequence[npt.NDArray[Any]]) -> npt.NDArray[np.float64]:
    """The averaged arrays of ``delta`` (``like`` says which) concatenated in order, C order
    within each array: shape (``averaged_size(like)``,), float64, what SecAgg+ masks."""
    parts = [d.ravel() for d, ref in zip(delta, like, strict=True) if is_averaged(ref)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float64)


def masked_delta(
    trained: Sequence[npt.NDArray[Any]], base: Sequence[npt.NDArray[Any]]
) -> npt.NDArray[np.float64]:
    """``masked_values(model_delta(trained, base), base)`` written straight into one float64
    vector of shape (``averaged_size(base)``,): no per-array float64 deltas on the way.

    Raises:
        ValueError: as ``model_delta``.
    """
    if len(trained) != len(base):
        raise ValueError(f"{len(trained)} arrays against a model of {len(base)}")
    out = np.empty(averaged_size(base), np.float64)
    offset = 0
    for t, b in zip(trained, base, strict=True):
        if t.shape != b.shape:
            raise ValueError(f"shape {t.shape} against {b.shape}")
        if is_averaged(b):
            piece = out[offset : offset + b.size]
            np.subtract(np.ravel(t), np.ravel(b), out=piece, dtype=np.float64)
            offset += b.size
    return out


def model_delta(trained: Sequence[npt.NDArray[Any]], base: Sequence[npt.NDArray[Any]]) -> Delta:
    """trained - base, array by array, in float64 (shapes of ``base``); zeros for the
    carried (non-float) arrays of ``base``.

    Raises:
        ValueError: the two models have different numbers of arrays or shapes.
    """
    if len(trained) != len(base):
        raise ValueError(f"{len(trained)} arrays against a model of {len(base)}")
    out: Delta = []
    for t, b in zip(trained, base, strict=True):
        if t.shape != b.shape:
            raise ValueError(f"shape {t.shape} against {b.shape}")
        if is_averaged(b):
            out.append(np.asarray(t, np.float64) - np.asarray(b, np.float64))
        else:
            out.append(np.zeros(b.shape, np.float64))
    return out


def mean_update(current: Weights, results: Sequence[ClientResult]) -> AggregatedUpdate:
    """The plain path: Σ n_k (w_k - current) / Σ n_k over ``results`` (McMahan et al. 2017,
    "Communication-Efficient Learning of Deep Networks from Decentralized Data", Algorithm 1's
    weighting), accumulated in float64, with the weighted mean ``train_loss`` when reported.

    Raises:
        RoundError: no result, or Σ num_examples ≤ 0 (nothing to average).
    """
    total = sum(r.num_examples for r in results)
    if not results or total <= 0:
        raise RoundError("no update with num_examples > 0 to aggregate")
    acc: Delta = [np.zeros(ref.shape, np.float64) for ref in current]
    for r in results:
        for i, d in enumerate(model_delta(r.weights, current)):
            acc[i] += d * (r.num_examples / total)
    metrics = weighted_metrics([(r.metrics, r.num_examples) for r in results])
    survivors = tuple(sorted(r.agent_id for r in results))
    return AggregatedUpdate(acc, total, survivors, metrics)


def split(flat: npt.NDArray[Any], like: Sequence[npt.NDArray[Any]]) -> Delta:
    """A flat vector of shape (d,) (d = ``averaged_size(like)``) as float64 arrays shaped
    like ``like``, in order (C order within each array), zeros for the carried arrays: the
    SecAgg+ mean back as a ``Delta`` (the inverse of ``masked_values``).

    Raises:
        ValueError: ``flat`` does not have exactly d values.
    """
    d = averaged_size(like)
    if flat.shape != (d,):
        raise ValueError(f"a vector of {flat.shape} values cannot fill a model of {d}")
    out: Delta = []
    offset = 0
    for ref in like:
        if not is_averaged(ref):
            out.append(np.zeros(ref.shape, np.float64))
            continue
        out.append(np.asarray(flat[offset : offset + ref.size], np.float64).reshape(ref.shape))
        offset += ref.size
    return out


def weighted_metrics(results: Sequence[tuple[Mapping[str, Scalar], int]]) -> dict[str, float]:
    """Every metric of ``(metrics, num_examples)`` pairs as its num_examples-weighted mean
    over the pairs that report it as a finite int or float (bools and strings are not
    averaged); a metric nobody reported that way is absent, never NaN."""
    values: dict[str, list[tuple[float, int]]] = {}
    for metrics, n in results:
        for name, v in metrics.items():
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                values.setdefault(name, []).append((float(v), n))
    means = {name: weighted_mean(pairs) for name, pairs in sorted(values.items())}
    return {name: m for name, m in means.items() if not math.isnan(m)}


def weighted_mean(values: Sequence[tuple[float, int]]) -> float:
    """Mean of ``(value, num_examples)`` pairs weighted by num_examples (NaN if none)."""
    total = sum(n for _, n in values)
    if total <= 0:
        return float("nan")
    return sum(v * n for v, n in values) / total
