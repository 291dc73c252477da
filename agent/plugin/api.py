"""The plugin API: what an ML engineer implements to train with fedbus.

A plugin is a Python distribution that exposes a factory in the entry-point group
``fedbus.plugins``::

    [project.entry-points."fedbus.plugins"]
    digits-mlp = "fedbus_digits.plugin:create"

The factory is called once per agent process with a ``PluginContext`` and returns an object
satisfying ``Plugin``. Plugins never touch the network: the agent owns the event loop,
serialization and security, and calls ``fit``/``evaluate`` in a worker thread.

Weights are an ordered list of numpy arrays (any numeric dtype, any shape); the order and the
shapes must stay the same across calls. Config values are scalars sent by the aggregator.

Optional hooks, each with a safe default when a plugin leaves it out:

- on the instance, ``num_examples() -> int``: the local training set's size, reported at join
  (default 0, unknown);
- on the instance, ``export(weights, path) -> Path``: write ``weights`` as a portable model
  (e.g. ONNX) at ``path`` and return the file written; ``fedbus demo`` calls it on the final
  global model and ``fedbus plugin export`` on request (default: no export);
- on the factory, ``describe() -> PluginInfo``: what ``fedbus plugin list`` shows and what
  ``fedbus demo`` needs to know about the options (default: ``PluginInfo`` with the first line
  of the factory's docstring as summary and nothing else). A class factory defines it as a
  ``staticmethod``; a function factory gets one with the ``describe_with`` decorator.

Conventions ``fedbus demo`` relies on, for plugins whose ``PluginInfo.options`` name them:
``agent_index`` (0-based) and ``num_agents`` pick this agent's shard of a data set that every
agent can load, and ``num_agents = 1`` means one agent holding all the training data and the
whole test set (the centralized reference); ``partition`` (``"iid"``/``"dirichlet"``),
``alpha`` and ``seed`` shape the split; ``local_agents`` is how many agents share this
machine (every one of them in the demo), so that a plugin can take only its share of the
cores.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar, runtime_checkable

import numpy as np
import numpy.typing as npt

from agent.mapped import release

#: A scalar that travels in configs and metrics.
Scalar = bool | int | float | str
#: Model parameters: an ordered list of arrays.
Weights = list[npt.NDArray[Any]]

ENTRY_POINT_GROUP = "fedbus.plugins"


class FitResult(NamedTuple):
    """What ``Plugin.fit`` returns: new weights, how many examples trained on, metrics."""

    weights: Weights
    num_examples: int
    metrics: dict[str, Scalar]


class EvaluateResult(NamedTuple):
    """What ``Plugin.evaluate`` returns: mean loss, examples evaluated, metrics."""

    loss: float
    num_examples: int
    metrics: dict[str, Scalar]


@dataclass(frozen=True, slots=True)
class PluginContext:
    """What the agent hands a plugin factory.

    Attributes:
        agent_id: this agent's id.
        options: the ``[plugin.options]`` table of the agent's config, as parsed TOML.
        state_dir: a directory the plugin may write to (caches, checkpoints).
    """

    agent_id: str
    options: Mapping[str, Any] = field(default_factory=dict)
    state_dir: Path | None = None


@runtime_checkable
class Plugin(Protocol):
    """Three methods named after the protocol verbs (see ARCHITECTURE.md §7).

    Optional hook: ``num_examples() -> int``, the size of the local training set, reported
    when the agent joins (default 0: unknown).
    """

    def get_weights(self) -> Weights:
        """The initial model parameters (used by the aggregator for round 0)."""
        ...

    def fit(self, weights: Weights, config: Mapping[str, Scalar]) -> FitResult:
        """Train locally starting from ``weights``; ``config`` holds e.g. ``epochs``, ``lr``."""
        ...

    def evaluate(self, weights: Weights, config: Mapping[str, Scalar]) -> EvaluateResult:
        """Evaluate ``weights`` on local held-out data."""
        ...


#: The options ``fedbus demo`` fills in per agent, for plugins that take them.
PARTITION_OPTIONS = ("agent_index", "num_agents", "partition", "alpha", "seed")


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """What a plugin says about itself (the factory's optional ``describe()`` hook).

    Attributes:
        summary: one line.
        options: every ``[plugin.options]`` key the plugin accepts with its default; ``None``
            marks a required option. Values must be JSON-encodable.
        fit_config: the fit config the plugin uses when the aggregator sends none.
        datasets: names of the data sets the plugin trains or evaluates on.
        models: names of the models it trains.
        exports: file formats its ``export`` hook writes (e.g. ``("onnx",)``).
    """

    summary: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    fit_config: Mapping[str, Scalar] = field(default_factory=dict)
    datasets: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    exports: tuple[str, ...] = ()

    def takes(self, option: str) -> bool:
        """True when ``option`` is one of the plugin's options."""
        return option in self.options


_Factory = TypeVar("_Factory", bound=Callable[..., Any])


def describe_with(describe: Callable[[], PluginInfo]) -> Callable[[_Factory], _Factory]:
    """Decorate a function factory with its ``describe()`` hook::

    @describe_with(lambda: PluginInfo(summary="...", options={"seed": 0}))
    def create(context: PluginContext) -> MyPlugin: ...
    """

    def attach(factory: _Factory) -> _Factory:
        factory.describe = describe  # type: ignore[attr-defined]
        return factory

    return attach


@runtime_checkable
class Exporter(Protocol):
    """A plugin with the optional ``export`` hook."""

    def export(self, weights: Weights, path: Path) -> Path:
        """Write ``weights`` as a portable model file at ``path``; return the path written.

        Raises:
            PluginError: weights of the wrong shapes, or a missing optional dependency.
        """
        ...


def weights_like(reference: Weights, arrays: Weights) -> bool:
    """True when ``arrays`` has the same count, shapes and dtypes as ``reference``."""
    return len(reference) == len(arrays) and all(
        a.shape == b.shape and a.dtype == b.dtype for a, b in zip(reference, arrays, strict=True)
    )


def is_averaged(array: npt.NDArray[Any]) -> bool:
    """True for the arrays a round averages: floating-point dtypes. Integer and boolean
    arrays (a BatchNorm's int64 ``num_batches_tracked``, a mask) are carried from the model
    in force, never averaged or masked (``agent.strategy.update``)."""
    return array.dtype.kind == "f"


def all_finite(arrays: Weights) -> bool:
    """True when no array holds NaN or infinity."""
    return all(_finite(a) for a in arrays if a.dtype.kind in "fc")


def _finite(array: npt.NDArray[Any]) -> bool:
    finite = bool(np.isfinite(array).all())
    release(array)  # a mapped update's pages, once checked (agent.mapped)
    return finite
