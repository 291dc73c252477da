"""Aggregation strategies. ``FedAvg``: McMahan et al., "Communication-Efficient Learning of
Deep Networks from Decentralized Data", AISTATS 2017, Algorithm 1 (weights averaged in
proportion to each client's num_examples).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from agent.errors import RoundError
from agent.plugin.api import Scalar, Weights


@dataclass(frozen=True, slots=True)
class ClientResult:
    """One survivor's contribution to a round."""

    agent_id: str
    weights: Weights
    num_examples: int
    metrics: dict[str, Scalar]


class Strategy(Protocol):
    """Turns the survivors' results into the next global model."""

    def aggregate(self, current: Weights, results: Sequence[ClientResult]) -> Weights: ...


class FedAvg:
    """Weighted mean of the results' weights, weights ∝ num_examples.

    Accumulates in float64 and returns arrays in the dtypes of ``current``.
    """

    def aggregate(self, current: Weights, results: Sequence[ClientResult]) -> Weights:
        """Raises ``RoundError`` when there is nothing to average."""
        total = sum(r.num_examples for r in results)
        if not results or total <= 0:
            raise RoundError("no update with num_examples > 0 to aggregate")
        out: Weights = []
        for i, ref in enumerate(current):
            acc = np.zeros(ref.shape, dtype=np.float64)
            for r in results:
                acc += r.weights[i].astype(np.float64) * (r.num_examples / total)
            out.append(acc.astype(ref.dtype))
        return out


def weighted_mean(values: Sequence[tuple[float, int]]) -> float:
    """Mean of ``(value, num_examples)`` pairs weighted by num_examples (NaN if none)."""
    total = sum(n for _, n in values)
    if total <= 0:
        return float("nan")
    return sum(v * n for v, n in values) / total
