"""The agent's side of ``agent.privacy``: clip the trained update, build the secure vector.

``clip_result`` runs on every fit whose config names a clip norm (``dp_clip_norm``, central
and distributed DP): the weights become base + Δ·min(1, C/‖Δ‖₂) and the metrics gain the
adaptive-clipping bit ``dp_clip_below``. ``secure_vector`` is what a SecAgg+ member
quantizes and masks: the delta (clipped again in float64, so the model's float32 rounding
cannot push it past C), then the secure-metric words; ``noise_share`` is distributed DP's
discrete Gaussian share of it (``agent.privacy.noise``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.messages.bodies import MetricRange, Scalar
from agent.plugin.api import FitResult
from agent.privacy import clipping, noise, secure_metrics


def clip_norm_of(config: Mapping[str, Scalar]) -> float | None:
    """The clip norm C a fit config names, or None (no DP this round)."""
    value = config.get(clipping.CLIP_KEY)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return float(value)


def clip_result(
    result: FitResult, base: Sequence[npt.NDArray[Any]], config: Mapping[str, Scalar]
) -> FitResult:
    """``result`` with its delta against ``base`` clipped to the config's C (unchanged when
    the config names none); weights keep the model's dtypes.

    Raises:
        ValueError: trained weights that are not finite (the fit cannot be used).
    """
    clip_norm = clip_norm_of(config)
    if clip_norm is None:
        return result
    delta = [
        np.asarray(w, np.float64) - np.asarray(b, np.float64)
        for w, b in zip(result.weights, base, strict=True)
    ]
    clipped, below = clipping.clip(delta, clip_norm)
    weights = [
        (np.asarray(b, np.float64) + d).astype(b.dtype) for b, d in zip(base, clipped, strict=True)
    ]
    metrics = {**result.metrics, clipping.BELOW_METRIC: float(below)}
    return FitResult(weights, result.num_examples, metrics)


def secure_vector(
    delta: npt.NDArray[np.float64],
    metrics: Mapping[str, Scalar],
    *,
    clip_norm: float | None,
    slots: Sequence[MetricRange],
    metric_scale: float,
) -> npt.NDArray[np.float64]:
    """The flat delta (shape (d,)), clipped to ``clip_norm`` when given, then the metric
    words (shape (2·slots,)): shape (d + 2·slots,), float64."""
    if clip_norm is not None:
        delta = clipping.clip([delta], clip_norm)[0][0]
    if not slots:
        return delta
    words = secure_metrics.encode(metrics, slots, scale=metric_scale)
    return np.concatenate([delta, words])


def noise_share(
    length: int, stddev: float, rng: np.random.Generator | None = None
) -> npt.NDArray[np.int64] | None:
    """This agent's discrete Gaussian share, shape (``length``,), in quantization steps;
    None when the round asks for none."""
    if stddev <= 0:
        return None
    return noise.discrete_gaussian(length, stddev, rng or np.random.default_rng())
