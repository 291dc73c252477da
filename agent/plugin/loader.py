"""Finding plugins through the ``fedbus.plugins`` entry-point group, and guarding their output.

``load_plugin`` returns a ``CheckedPlugin``: the plugin wrapped so that every result is checked
(count, shapes and dtypes of weights, finite values, non-negative counts) and anything a
plugin raises or returns wrongly becomes a ``PluginError`` naming the plugin.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import ConfigError, PluginError
from agent.plugin.api import (
    ENTRY_POINT_GROUP,
    EvaluateResult,
    FitResult,
    Plugin,
    PluginContext,
    PluginInfo,
    Scalar,
    Weights,
    all_finite,
    weights_like,
)


def available_plugins() -> dict[str, EntryPoint]:
    """Installed plugins by entry-point name."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


#: A plugin factory: what an entry point names.
Factory = Callable[[PluginContext], Any]


@dataclass(frozen=True, slots=True)
class PluginDescription:
    """An installed plugin as ``fedbus plugin list`` shows it.

    Attributes:
        name: the entry-point name.
        entry_point: ``module:attribute`` of the factory.
        distribution: the distribution that declares it, and its version (``?`` if unknown).
        info: the factory's ``describe()``, or the default ``PluginInfo``.
    """

    name: str
    entry_point: str
    distribution: str
    version: str
    info: PluginInfo


def find_factory(name: str) -> tuple[EntryPoint, Factory]:
    """The entry point named ``name`` and the factory it loads.

    Raises:
        PluginError: no such plugin (the message lists the installed ones), or importing it
            failed.
    """
    found = available_plugins()
    if name not in found:
        installed = ", ".join(sorted(found)) or "none"
        raise PluginError(
            f"no plugin named {name!r} in entry-point group {ENTRY_POINT_GROUP} "
            f"(installed: {installed})"
        )
    try:
        factory: Factory = found[name].load()
    except Exception as exc:
        raise PluginError(f"plugin {name!r} failed to import: {exc!r}") from exc
    return found[name], factory


def plugin_info(factory: Factory, name: str = "plugin") -> PluginInfo:
    """The factory's ``describe()`` hook, or the default ``PluginInfo`` when it has none.

    Raises:
        PluginError: the hook raised or returned something else than a ``PluginInfo``.
    """
    hook = getattr(factory, "describe", None)
    if not callable(hook):
        doc = (getattr(factory, "__doc__", None) or "").strip()
        return PluginInfo(summary=doc.splitlines()[0] if doc else "")
    try:
        info = hook()
    except Exception as exc:
        raise PluginError(f"plugin {name!r}: describe() raised {exc!r}") from exc
    if not isinstance(info, PluginInfo):
        raise PluginError(f"plugin {name!r}: describe() returned {type(info).__name__}")
    return info


def describe_plugin(name: str) -> PluginDescription:
    """Entry point, distribution, version and ``PluginInfo`` of installed plugin ``name``.

    Raises:
        PluginError: as ``find_factory`` and ``plugin_info``.
    """
    ep, factory = find_factory(name)
    dist, version = (ep.dist.name, ep.dist.version) if ep.dist is not None else ("?", "?")
    return PluginDescription(name, ep.value, dist, version, plugin_info(factory, name))


def build_plugin(name: str, factory: Factory, context: PluginContext) -> CheckedPlugin:
    """Call ``factory(context)`` and wrap the result in a ``CheckedPlugin``.

    Raises:
        PluginError: the factory failed, or it returned something that is not a ``Plugin``.
        ConfigError: the factory refused its options as unworkable here (e.g. a device the
            machine does not have), raised as the plugin worded it.
    """
    try:
        plugin = factory(context)
    except (PluginError, ConfigError):
        raise
    except Exception as exc:
        raise PluginError(f"plugin {name!r} failed to load: {exc}") from exc
    if not isinstance(plugin, Plugin):
        raise PluginError(f"plugin {name!r} returned {type(plugin).__name__}, not a Plugin")
    return CheckedPlugin(name, plugin)


def load_plugin(name: str, context: PluginContext) -> CheckedPlugin:
    """Load plugin ``name`` and build it with ``context``.

    Raises:
        PluginError: no such plugin (the message lists the installed ones), the factory
            failed, or it returned something that is not a ``Plugin``.
        ConfigError: the plugin refused its options (``build_plugin``).
    """
    _, factory = find_factory(name)
    return build_plugin(name, factory, context)


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

    @property
    def plugin(self) -> Plugin:
        """The wrapped plugin, unchecked."""
        return self._plugin

    def export(self, weights: Weights, path: Path) -> Path | None:
        """The optional hook ``export(weights, path)``; None when the plugin lacks it.

        Raises:
            PluginError: the hook raised or did not return a path.
        """
        hook = getattr(self._plugin, "export", None)
        if hook is None:
            return None
        written = self._call(hook, [np.asarray(w) for w in weights], path)
        if not isinstance(written, Path | str):
            raise PluginError(f"{self.name}: export() must return the path it wrote")
        return Path(written)

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
