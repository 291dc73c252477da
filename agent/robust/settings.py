"""``[aggregator.robust]``: the bounds on one device's influence, with safe defaults."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import msgspec

AtLeastOne = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]


class Aggregation(StrEnum):
    """How a plain round combines its updates (``agent.robust.aggregate``)."""

    MEAN = "mean"  # num_examples-weighted mean (FedAvg, McMahan et al. 2017)
    MEDIAN = "median"  # coordinate-wise median (Yin et al., ICML 2018)
    TRIMMED_MEAN = "trimmed_mean"  # coordinate-wise trimmed mean (Yin et al., ICML 2018)
    MULTI_KRUM = "multi_krum"  # Blanchard et al., NeurIPS 2017


class OnViolation(StrEnum):
    """What happens to an update whose L2 norm is above the bound."""

    CLIP = "clip"  # scaled down to the bound (kept)
    REJECT = "reject"  # refused, logged ``update_rejected reason=norm_above_bound``


class RobustConfig(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """``[aggregator.robust]``: how much one device can move the model (``agent.robust``).

    Attributes:
        max_weight: a plain update weighs min(num_examples, max_weight) (as SecAgg+'s
            ``max_weight``); an update claiming more examples than its agent declared at
            join is refused (``weight_above_declared``).
        max_update_norm: L2 bound on each update's delta (trained - model in force); 0: no
            absolute bound. Under SecAgg+ honest trainers clip to it before masking and the
            aggregator checks the unmasked mean against it.
        norm_factor: plain rounds also bound each delta's L2 norm by ``norm_factor`` times the
            median norm of the round's updates (scale-free; needs 3 updates; 0: off).
        on_norm: ``clip`` or ``reject`` an update above a norm bound.
        aggregation: ``mean`` (FedAvg), ``median``, ``trimmed_mean`` or ``multi_krum``
            (plain rounds only; SecAgg+ reveals only the sum).
        trim_fraction: trimmed mean: the share β of values cut at each end, in [0, 0.5).
        byzantine: Multi-Krum's f, the attackers tolerated (n > 2f + 2 needed).
        krum_select: Multi-Krum's m, the updates averaged (0: n - f).
        max_change_factor: the model guard: a new model is refused unless
            ‖new - old‖₂ ≤ max_change_factor · max(‖old‖₂, 1) (0: off); it must be finite.
        max_model_change: the guard's absolute bound on ‖new - old‖₂ (0: none).
    """

    max_weight: AtLeastOne = 1000
    max_update_norm: NonNegative = 0.0
    norm_factor: NonNegative = 10.0
    on_norm: OnViolation = OnViolation.REJECT
    aggregation: Aggregation = Aggregation.MEAN
    trim_fraction: Annotated[float, msgspec.Meta(ge=0, lt=0.5)] = 0.1
    byzantine: Annotated[int, msgspec.Meta(ge=0)] = 1
    krum_select: Annotated[int, msgspec.Meta(ge=0)] = 0
    max_change_factor: NonNegative = 100.0
    max_model_change: NonNegative = 0.0
