"""Secure metrics: the cohort's weighted fit metrics through the SecAgg+ vector.

Under SecAgg+ the aggregator must not see one agent's metrics, so each agent appends its
fit metrics to the model delta it masks and the aggregator learns only their sums. Every
announced slot (``MetricRange``: name, [low, high]) takes two words of the vector,

    value    a · (clip(m, low, high) − low) / (high − low)      ∈ [0, a]
    present  a if the plugin reported a finite m, else 0          ∈ {0, a}

and the quantizer weights both by w/W like the delta (``agent.secagg.quantize``), so the
unmasked sum holds Σ w·value and Σ w·present. The cohort's weighted mean is then

    mean = low + (high − low) · Σ w·value / Σ w·present

over the survivors that reported it (the ``present`` word keeps one agent's missing metric
from biasing the mean; under distributed DP the noisy Σ w·present is replaced by the exact
Σ w of the survivors). The amplitude a is the SecAgg+ clipping range c without DP; with
distributed DP it is ``metric_share · C / sqrt(2·slots)``, so the metric words add at most
``metric_share · C`` to one agent's L2 sensitivity (``agent.privacy.plan``). A metric outside
its range is clipped to it: the documented range is part of the result's meaning. Metrics
the round does not announce stay on the agent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from agent.errors import ConfigError
from agent.messages.bodies import MetricRange, Scalar

#: A slot whose Σ w·present is below this fraction of one unit counts as "nobody reported".
_PRESENT_FLOOR = 0.5


def slots(ranges: Mapping[str, tuple[float, float]]) -> list[MetricRange]:
    """The announced slots, sorted by name, from ``[aggregator.secagg] metrics``.

    Raises:
        ConfigError: a range that is not finite with low < high.
    """
    out = []
    for name in sorted(ranges):
        low, high = ranges[name]
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ConfigError(f"secure metric {name!r}: range [{low}, {high}] needs low < high")
        out.append(MetricRange(name=name, low=float(low), high=float(high)))
    return out


def width(announced: Sequence[MetricRange]) -> int:
    """The words the metric slots add to the masked vector: two per slot."""
    return 2 * len(announced)


def encode(
    metrics: Mapping[str, Scalar], announced: Sequence[MetricRange], *, scale: float
) -> npt.NDArray[np.float64]:
    """One agent's metric words, shape (2·slots,), float64, each in [0, ``scale``]; a bool,
    a string, NaN or a missing metric is "not reported" (both words 0)."""
    out = np.zeros(width(announced), np.float64)
    for i, slot in enumerate(announced):
        value = metrics.get(slot.name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not math.isfinite(value):
            continue
        clipped = min(max(float(value), slot.low), slot.high)
        out[2 * i] = scale * (clipped - slot.low) / (slot.high - slot.low)
        out[2 * i + 1] = scale
    return out


def decode(
    sums: npt.NDArray[np.floating],
    announced: Sequence[MetricRange],
    *,
    scale: float,
    total_weight: int | None = None,
) -> dict[str, float]:
    """The cohort's weighted means from the unmasked sums of the metric words.

    Args:
        sums: shape (2·slots,): Σ w·value and Σ w·present per slot (the SecAgg+ weighted
            sum, num_examples units, not yet divided by Σ w).
        scale: the amplitude a the agents encoded with.
        total_weight: under distributed DP, Σ w of the survivors: the denominator of every
            mean instead of the noisy Σ w·present (each slot's estimate is then unbiased when
            every survivor reported it, and clamped to [low, high]).

    Returns:
        name → weighted mean, only for slots some survivor reported (never NaN); under
        distributed DP every slot, as its noisy estimate.
    """
    if sums.shape != (width(announced),):
        raise ValueError(f"{sums.shape} metric words for {len(announced)} slots")
    out: dict[str, float] = {}
    for i, slot in enumerate(announced):
        value, present = float(sums[2 * i]), float(sums[2 * i + 1])
        if total_weight is not None:
            present = scale * total_weight
        elif present / scale < _PRESENT_FLOOR:
            continue
        fraction = min(max(value / present, 0.0), 1.0)
        out[slot.name] = slot.low + (slot.high - slot.low) * fraction
    return out
