"""FedAvg and FedAvgM: the model in force moved along the survivors' mean delta.

- ``FedAvg``: McMahan et al., "Communication-Efficient Learning of Deep Networks from
  Decentralized Data", AISTATS 2017, Algorithm 1, written as a server step
  x_{t+1} = x_t + η Δ_t (Reddi et al. 2021, Algorithm 1 with SGD as the server optimizer);
  η = 1 is plain federated averaging (the weighted mean of the survivors' weights).
- ``FedAvgM``: Hsu, Qi and Brown, "Measuring the Effects of Non-Identical Data Distribution
  for Federated Visual Classification", 2019, §3 (server momentum):
  v_t = β v_{t-1} + Δ_t, x_{t+1} = x_t + η v_t, v_0 = 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.plugin.api import Weights
from agent.strategy.base import (
    ServerOptimizer,
    Strategy,
    StrategyState,
    load_arrays,
    moved,
    save_arrays,
)
from agent.strategy.update import AggregatedUpdate, ClientResult, Delta, weighted_mean

__all__ = ["ClientResult", "FedAvg", "FedAvgM", "Strategy", "weighted_mean"]


class FedAvg(ServerOptimizer):
    """x_{t+1} = x_t + η Δ_t; stateless.

    Args:
        server_lr: η (1.0: the weighted mean of the survivors' models).
    """

    def __init__(self, server_lr: float = 1.0) -> None:
        self.server_lr = server_lr

    def step(self, current: Weights, update: AggregatedUpdate) -> Weights:
        """Arrays shaped and typed like ``current`` (float64 arithmetic)."""
        if self.server_lr == 1.0:  # plain FedAvg: no scaled copy of a model-sized delta
            return moved(current, update.delta, spend=update.spendable)
        return moved(current, [self.server_lr * d for d in update.delta])

    def state(self) -> StrategyState:
        """Empty: FedAvg keeps nothing between rounds."""
        return {}

    def load_state(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        """Nothing to restore."""


class FedAvgM(ServerOptimizer):
    """Server momentum (Hsu et al. 2019, §3): v_t = β v_{t-1} + Δ_t, x_{t+1} = x_t + η v_t.

    Args:
        server_lr: η; the effective rate is η / (1 - β).
        momentum: β ∈ [0, 1).

    State: ``momentum_i`` (v, float64, shaped like the model's array i) after the first step.
    """

    def __init__(self, server_lr: float = 0.1, momentum: float = 0.9) -> None:
        self.server_lr, self.momentum = server_lr, momentum
        self._v: Delta | None = None

    def step(self, current: Weights, update: AggregatedUpdate) -> Weights:
        """Arrays shaped and typed like ``current`` (float64 arithmetic)."""
        if self._v is None:
            self._v = [np.zeros_like(d) for d in update.delta]
        self._v = [self.momentum * v + d for v, d in zip(self._v, update.delta, strict=True)]
        return moved(current, [self.server_lr * v for v in self._v])

    def state(self) -> StrategyState:
        """``momentum_0``, ``momentum_1``, ...: v (empty before the first step)."""
        return save_arrays("momentum", self._v)

    def load_state(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        """Restore v from ``state()``'s arrays."""
        self._v = load_arrays("momentum", state)
