"""Finding plugins through the ``fedbus.plugins`` entry-point group, and guarding their output.

``load_plugin`` returns a ``CheckedPlugin``: the plugin wrapped so that every result is checked
(count, shapes and dtypes of weights, finite values, non-negative counts) and anything a
plugin raises or returns wrongly becomes a ``PluginError`` naming the plugin.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import numpy as np

from agent.errors import PluginError
from agent.plugin.api import (
    ENTRY_POINT_GROUP,
    EvaluateResult,
    FitResult,
    Plugin,
    PluginContext,
    Scalar,
    Weights,
    all_finite,
    weights_like,
)


def available_plugins() -> dict[str, EntryPoint]:
    """Installed plugins by entry-point name."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_plugin(name: str, context: PluginContext) -> CheckedPlugin:
    """Load plugin ``name`` and build it with ``context``.

    Raises:
        PluginError: no such plugin (the message lists the installed ones), the factory
            failed, or it returned something that is not a ``Plugin``.
    """
    found = available_plugins()
    if name not in found:
        installed = ", ".join(sorted(found)) or "none"
        raise PluginError(
            f"no plugin named {name!r} in entry-point group {ENTRY_POINT_GROUP} "
            f"(installed: {installed})"
        )
    try:
        factory = found[name].load()
        plugin = factory(context)
    except PluginError:
        raise
    except Exception as exc:
        raise PluginError(f"plugin {name!r} failed to load: {exc}") from exc
    if not isinstance(plugin, Plugin):
        raise PluginError(f"plugin {name!r} returned {type(plugin).__name__}, not a Plugin")
    return CheckedPlugin(name, plugin)


class CheckedPlugin:
    """A plugin whose every result is validated. Methods mirror ``Plugin``."""

    def __init__(self, name: str, plugin: Plugin) -> None:
        self.name = name
        self._plugin = plugin

    def num_examples(self) -> int:
        """The optional hook ``num_examples()``, 0 when the plugin lacks it."""
        hook = getattr(self._plugin, "num_examples", None)
        if hook is None:
            return 0
        return self._count(self._call(hook), "num_examples()")

    def get_weights(self) -> Weights:
        weights = self._call(self._plugin.get_weights)
        self._check_weights(weights, None, "get_weights()")
        return list(weights)

    def fit(self, weights: Weights, config: Mapping[str, Scalar]) -> FitResult:
        result = self._call(self._plugin.fit, weights, config)
        if not isinstance(result, tuple) or len(result) != 3:
            raise PluginError(f"{self.name}: fit() must return (weights, num_examples, metrics)")
        new, n, metrics = result
        self._check_weights(new, weights, "fit()")
        return FitResult(list(new), self._count(n, "fit() num_examples"), dict(metrics))

    def evaluate(self, weights: Weights, config: Mapping[str, Scalar]) -> EvaluateResult:
        result = self._call(self._plugin.evaluate, weights, config)
        if not isinstance(result, tuple) or len(result) != 3:
            raise PluginError(f"{self.name}: evaluate() must return (loss, num_examples, metrics)")
        loss, n, metrics = result
        if not np.isfinite(loss):
            raise PluginError(f"{self.name}: evaluate() returned a non-finite loss")
        return EvaluateResult(float(loss), self._count(n, "evaluate() num_examples"), dict(metrics))

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"{self.name}: {fn.__name__}() raised {exc!r}") from exc

    def _count(self, value: object, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise PluginError(f"{self.name}: {what} must be a non-negative int, got {value!r}")
        return int(value)

    def _check_weights(self, weights: object, reference: Weights | None, what: str) -> None:
        if not isinstance(weights, list | tuple) or not all(
            isinstance(a, np.ndarray) for a in weights
        ):
            raise PluginError(f"{self.name}: {what} must return a list of numpy arrays")
        arrays = list(weights)
        if reference is not None and not weights_like(reference, arrays):
            raise PluginError(f"{self.name}: {what} changed the count, shapes or dtypes")
        if not all_finite(arrays):
            raise PluginError(f"{self.name}: {what} returned NaN or infinite weights")
