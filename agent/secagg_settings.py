"""``[aggregator.secagg]``: the SecAgg+ settings, and whether updates travel masked at all."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import msgspec

from agent.privacy.config import secure_metrics
from agent.secagg.params import SecAggParams, resolve
from agent.settings_types import AtLeastOne, Positive, Table


class SecureAggregation(StrEnum):
    """How updates reach the aggregator: masked (SecAgg+) or in the clear."""

    SECAGG_PLUS = "secagg+"
    NONE = "none"


class SecAggConfig(Table, frozen=True):
    """``[aggregator.secagg]``: SecAgg+ settings (``agent.secagg``); 0 means "the default for
    the cohort size" (see ``agent.secagg.params``).

    Attributes:
        num_neighbours: k, the neighbours each client shares secrets with (default: the
            smallest k ≥ 2·log2(n) meeting the design abort bound, capped at n - 1).
        reconstruction_threshold: t, shares needed to rebuild a secret (default k//2 + 1).
        clipping_range: every coordinate of an update (the model delta) is clipped to
            [-c, c].
        quantization_bits: bits per value (default: the most, up to 24, that keep n values
            in a 32-bit ring).
        max_weight: num_examples is capped at this for weighting.
        stage_timeout: seconds each key-exchange and unmask stage waits.
        metrics: the secure fit metrics, name → [low, high]: each is clipped to its range and
            masked with the update, so the aggregator learns only the cohort's weighted mean
            (``agent.privacy.secure_metrics``); a metric not named here stays on the agent.
    """

    num_neighbours: Annotated[int, msgspec.Meta(ge=0)] = 0
    reconstruction_threshold: Annotated[int, msgspec.Meta(ge=0)] = 0
    clipping_range: Positive = 8.0
    quantization_bits: Annotated[int, msgspec.Meta(ge=0, le=62)] = 0
    max_weight: AtLeastOne = 1000
    stage_timeout: Positive = 10.0
    metrics: dict[str, tuple[float, float]] = msgspec.field(default_factory=secure_metrics)

    def params(self, cohort_size: int) -> SecAggParams:
        """The parameters for a cohort of ``cohort_size``.

        Raises:
            ConfigError: they cannot be secure or cannot reconstruct (the message says why).
        """
        return resolve(
            cohort_size,
            num_neighbours=self.num_neighbours,
            threshold=self.reconstruction_threshold,
            clipping_range=self.clipping_range,
            quantization_bits=self.quantization_bits,
            max_weight=self.max_weight,
        )
