"""L2 clipping of one agent's model delta, and adaptive clipping of the clip norm.

Clipping bounds one agent's influence on the sum, the sensitivity every DP guarantee of
``agent.privacy`` is stated for: Δ ← Δ · min(1, C / ‖Δ‖₂) (McMahan et al., "Learning
Differentially Private Recurrent Language Models", ICLR 2018, Algorithm 1, ``ClipFn``).

Adaptive clipping (Andrew, Thakkar, McMahan and Ramaswamy, "Differentially Private Learning
with Adaptive Clipping", NeurIPS 2021, Algorithm 1): every agent also reports the bit
b = 1[‖Δ‖₂ ≤ C]; the aggregator takes the noisy fraction b̄ = (Σ b + N(0, σ_b²)) / s of its s
survivors and moves C geometrically towards the target quantile γ of the norms,
C ← C · exp(−η_C · (b̄ − γ)). The bit is a secure metric under SecAgg+ (``dp_clip_below``),
so the aggregator never sees one agent's. The noise budget is shared between the two
releases: the delta's noise multiplier becomes z_Δ = (z^−2 − (2σ_b)^−2)^(−1/2) (§3.1), so
the pair costs what the Gaussian mechanism with multiplier z costs alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

#: The fit-config key of the clip norm C, and the fit metric of the adaptive-clipping bit.
CLIP_KEY = "dp_clip_norm"
BELOW_METRIC = "dp_clip_below"


def l2_norm(arrays: Sequence[npt.NDArray[Any]]) -> float:
    """‖concat(arrays)‖₂, in float64."""
    return math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays))


def clip(
    delta: Sequence[npt.NDArray[Any]], clip_norm: float
) -> tuple[list[npt.NDArray[np.float64]], bool]:
    """Δ · min(1, C/‖Δ‖₂) as float64 arrays shaped like ``delta``, and whether ‖Δ‖₂ ≤ C
    (the adaptive-clipping bit).

    Raises:
        ValueError: C not a positive finite number, or Δ not finite.
    """
    if not (clip_norm > 0 and math.isfinite(clip_norm)):
        raise ValueError(f"clip norm must be positive and finite, got {clip_norm}")
    norm = l2_norm(delta)
    if not math.isfinite(norm):
        raise ValueError("cannot clip a delta that is not finite")
    factor = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return [np.asarray(d, np.float64) * factor for d in delta], norm <= clip_norm


def delta_noise_multiplier(z: float, count_stddev: float) -> float:
    """z_Δ = (z^−2 − (2σ_b)^−2)^(−1/2): what the delta keeps of multiplier z when the
    clipped count takes noise σ_b (Andrew et al. 2021, §3.1).

    Raises:
        ValueError: σ_b too small for z (the count alone would spend the whole budget).
    """
    rest = z**-2 - (2 * count_stddev) ** -2
    if rest <= 0:
        raise ValueError(
            f"clip_count_stddev={count_stddev} leaves nothing of noise multiplier {z}: "
            f"it must exceed z/2 = {z / 2:.3g}"
        )
    return float(rest**-0.5)


def next_clip_norm(
    clip_norm: float, below_fraction: float, *, target_quantile: float, lr: float
) -> float:
    """C · exp(−η_C (b̄ − γ)) (Andrew et al. 2021, Algorithm 1, the geometric update)."""
    return clip_norm * math.exp(-lr * (below_fraction - target_quantile))
