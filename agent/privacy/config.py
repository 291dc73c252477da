"""``[aggregator.privacy]``: the differential-privacy settings (``agent.privacy``).

A leaf of ``agent.privacy`` that ``agent.config`` imports; nothing here imports the rest of
the package, so the config stays below it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import msgspec

Positive = Annotated[float, msgspec.Meta(gt=0)]
Fraction = Annotated[float, msgspec.Meta(gt=0, le=1)]

#: The default secure fit metrics and their documented ranges (``[aggregator.secagg]
#: metrics``): a value is clipped to its range before it is masked.
SECURE_METRICS: dict[str, tuple[float, float]] = {
    "train_loss": (0.0, 20.0),  # cross-entropy in nats (10 classes start near 2.3)
    "train_accuracy": (0.0, 1.0),  # a fraction
    "dp_clip_below": (0.0, 1.0),  # adaptive clipping's bit: 1 if the update was not clipped
}


def secure_metrics() -> dict[str, tuple[float, float]]:
    """A fresh copy of ``SECURE_METRICS`` (the config default)."""
    return dict(SECURE_METRICS)


class PrivacyMode(StrEnum):
    """Differential privacy of the released model (``agent.privacy``)."""

    OFF = "off"
    CENTRAL = "central"  # agents clip, the aggregator adds Gaussian noise to the aggregate
    DISTRIBUTED = "distributed"  # agents clip and add discrete Gaussian shares (SecAgg+)


class PrivacyConfig(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """``[aggregator.privacy]``: user-level (ε, δ)-DP of the model (``agent.privacy``).

    Attributes:
        mode: off, central or distributed (distributed needs ``secure_aggregation``).
        clip_norm: C, the L2 norm every agent's model delta is clipped to (the initial C
            with adaptive clipping).
        noise_multiplier: z, noise standard deviation / C; 0: the smallest z that keeps ε
            within ``target_epsilon`` over ``rounds`` rounds.
        target_epsilon: the budget; 0: none. A round that would exceed it does not run.
        delta: δ of the (ε, δ) reported after every round.
        adaptive_clipping: central only: C follows the ``target_quantile`` of the update
            norms (Andrew et al. 2021), ``clip_lr`` its geometric step.
        clip_count_stddev: σ_b, the noise on the clipped count (0: expected cohort / 20).
        min_survivor_fraction: distributed only: noise shares are sized for this fraction
            of the cohort; an unmask with fewer survivors is refused by the agents.
        metric_share: distributed only: the secure metrics' share of one agent's L2
            sensitivity (their slots span at most ``metric_share`` · C together).
    """

    mode: PrivacyMode = PrivacyMode.OFF
    clip_norm: Positive = 1.0
    noise_multiplier: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    target_epsilon: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    delta: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 1e-5
    adaptive_clipping: bool = False
    target_quantile: Fraction = 0.5
    clip_lr: Positive = 0.2
    clip_count_stddev: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    min_survivor_fraction: Fraction = 0.9
    metric_share: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.1

    def __post_init__(self) -> None:
        if self.mode is not PrivacyMode.OFF and not (self.noise_multiplier or self.target_epsilon):
            raise ValueError("privacy needs noise_multiplier or target_epsilon")
        if self.adaptive_clipping and self.mode is PrivacyMode.DISTRIBUTED:
            raise ValueError("adaptive_clipping is built for mode = 'central' only")
