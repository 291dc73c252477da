"""A plugin made slower on purpose: ``[simulate] slowdown`` (``fedbus demo --slow-agents``)."""

from __future__ import annotations

import time
from collections.abc import Mapping

from agent.plugin.api import FitResult, Scalar, Weights
from agent.plugin.loader import CheckedPlugin


class SlowedPlugin(CheckedPlugin):
    """``inner`` whose every ``fit`` takes ``slowdown`` x its own time: it sleeps
    (slowdown - 1) x the fit's duration after the plugin returns (in the fit's thread)."""

    def __init__(self, inner: CheckedPlugin, slowdown: float) -> None:
        super().__init__(inner.name, inner.plugin)
        self.slowdown = slowdown

    def fit(self, weights: Weights, config: Mapping[str, Scalar]) -> FitResult:
        started = time.perf_counter()
        result = super().fit(weights, config)
        time.sleep((self.slowdown - 1) * (time.perf_counter() - started))
        return result


def slowed(plugin: CheckedPlugin, slowdown: float) -> CheckedPlugin:
    """``plugin``, slowed down when ``slowdown`` > 1."""
    return SlowedPlugin(plugin, slowdown) if slowdown > 1 else plugin
