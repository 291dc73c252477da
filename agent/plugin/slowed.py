"""A plugin made slower on purpose: ``[simulate] slowdown`` and ``fit_seconds``
(``fedbus demo --slow-agents --slowdown --fit-seconds``)."""

from __future__ import annotations

import time
from collections.abc import Mapping

from agent.plugin.api import FitResult, Scalar, Weights
from agent.plugin.loader import CheckedPlugin


class SlowedPlugin(CheckedPlugin):
    """``inner`` whose every ``fit`` takes ``slowdown x max(own duration, fit_seconds)``
    seconds: it sleeps the difference after the plugin returns (in the fit's thread).
    ``fit_seconds`` is a simulated device compute time (0: the machine's own)."""

    def __init__(self, inner: CheckedPlugin, slowdown: float, fit_seconds: float = 0.0) -> None:
        super().__init__(inner.name, inner.plugin)
        self.slowdown = slowdown
        self.fit_seconds = fit_seconds

    def fit(self, weights: Weights, config: Mapping[str, Scalar]) -> FitResult:
        started = time.perf_counter()
        result = super().fit(weights, config)
        took = time.perf_counter() - started
        time.sleep(max(0.0, self.slowdown * max(took, self.fit_seconds) - took))
        return result


def slowed(plugin: CheckedPlugin, slowdown: float, fit_seconds: float = 0.0) -> CheckedPlugin:
    """``plugin``, slowed down when ``slowdown`` > 1 or ``fit_seconds`` > 0."""
    return (
        SlowedPlugin(plugin, slowdown, fit_seconds) if slowdown > 1 or fit_seconds > 0 else plugin
    )
