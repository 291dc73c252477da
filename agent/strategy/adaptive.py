"""Adaptive server optimizers: Reddi et al., "Adaptive Federated Optimization", ICLR 2021,
Algorithm 2 (FedAdagrad, FedAdam, FedYogi), on the round's mean delta Δ_t:

    m_t = β1 m_{t-1} + (1 - β1) Δ_t
    v_t = v_{t-1} + Δ_t²                                   (FedAdagrad)
    v_t = β2 v_{t-1} + (1 - β2) Δ_t²                       (FedAdam)
    v_t = v_{t-1} - (1 - β2) Δ_t² sign(v_{t-1} - Δ_t²)    (FedYogi)
    x_{t+1} = x_t + η m_t / (√v_t + τ)

with m_{-1} = 0 and v_{-1} = τ² (Algorithm 2's initialisation v_{-1} ≥ τ²), no bias
correction, all element-wise in float64. The state is m and v, one float64 array per model
array.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.plugin.api import Weights
from agent.strategy.base import ServerOptimizer, StrategyState, load_arrays, moved, save_arrays
from agent.strategy.update import AggregatedUpdate, Delta


class SecondMoment(StrEnum):
    """Algorithm 2's three v_t updates."""

    ADAGRAD = "adagrad"
    ADAM = "adam"
    YOGI = "yogi"


class Adaptive(ServerOptimizer):
    """Reddi et al. 2021, Algorithm 2 with the ``rule`` variant of v_t.

    Args:
        rule: which v_t update.
        server_lr: η.
        beta1: β1 ∈ [0, 1) (first moment decay).
        beta2: β2 ∈ [0, 1) (second moment decay; unused by FedAdagrad).
        tau: τ > 0, the adaptivity (and v_{-1} = τ²).

    State: ``m_i`` and ``v_i`` (float64, shaped like the model's array i) after a step.
    """

    def __init__(
        self,
        rule: SecondMoment,
        *,
        server_lr: float = 0.03,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
    ) -> None:
        self.rule = rule
        self.server_lr, self.beta1, self.beta2, self.tau = server_lr, beta1, beta2, tau
        self._m: Delta | None = None
        self._v: Delta | None = None

    def step(self, current: Weights, update: AggregatedUpdate) -> Weights:
        """Arrays shaped and typed like ``current``; m and v advance one round."""
        delta = update.delta
        m0 = self._m or [np.zeros_like(d) for d in delta]
        v0 = self._v or [np.full_like(d, self.tau**2) for d in delta]
        b1, b2 = self.beta1, self.beta2
        self._m = [b1 * m + (1 - b1) * d for m, d in zip(m0, delta, strict=True)]
        self._v = [self._second(v, d * d, b2) for v, d in zip(v0, delta, strict=True)]
        step = [
            self.server_lr * m / (np.sqrt(v) + self.tau)
            for m, v in zip(self._m, self._v, strict=True)
        ]
        return moved(current, step)

    def _second(
        self, v: npt.NDArray[np.float64], d2: npt.NDArray[np.float64], b2: float
    ) -> npt.NDArray[np.float64]:
        match self.rule:
            case SecondMoment.ADAGRAD:
                return v + d2
            case SecondMoment.ADAM:
                return b2 * v + (1 - b2) * d2
            case SecondMoment.YOGI:
                return v - (1 - b2) * d2 * np.sign(v - d2)

    def state(self) -> StrategyState:
        """``m_0``, ``m_1``, ... and ``v_0``, ``v_1``, ... (empty before the first step)."""
        return save_arrays("m", self._m) | save_arrays("v", self._v)

    def load_state(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        """Restore m and v from ``state()``'s arrays.

        Raises:
            ValueError: m and v do not have the same number of arrays.
        """
        m, v = load_arrays("m", state), load_arrays("v", state)
        if len(m or []) != len(v or []):
            raise ValueError("strategy state: m and v differ in length")
        self._m, self._v = m, v


def FedAdagrad(**kwargs: float) -> Adaptive:  # noqa: N802 - a strategy's name
    """Reddi et al. 2021, Algorithm 2, FedAdagrad: v_t = v_{t-1} + Δ_t²."""
    return Adaptive(SecondMoment.ADAGRAD, **kwargs)


def FedAdam(**kwargs: float) -> Adaptive:  # noqa: N802 - a strategy's name
    """Reddi et al. 2021, Algorithm 2, FedAdam: v_t = β2 v_{t-1} + (1 - β2) Δ_t²."""
    return Adaptive(SecondMoment.ADAM, **kwargs)


def FedYogi(**kwargs: float) -> Adaptive:  # noqa: N802 - a strategy's name
    """Reddi et al. 2021, Algorithm 2, FedYogi: v_t = v_{t-1} - (1-β2) Δ_t² sign(v_{t-1} - Δ_t²)."""
    return Adaptive(SecondMoment.YOGI, **kwargs)
