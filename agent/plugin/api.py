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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

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
    """Three methods named after the protocol verbs (see DESIGN.md §7).

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


def weights_like(reference: Weights, arrays: Weights) -> bool:
    """True when ``arrays`` has the same count, shapes and dtypes as ``reference``."""
    return len(reference) == len(arrays) and all(
        a.shape == b.shape and a.dtype == b.dtype for a, b in zip(reference, arrays, strict=True)
    )


def all_finite(arrays: Weights) -> bool:
    """True when no array holds NaN or infinity."""
    return all(bool(np.isfinite(a).all()) for a in arrays if a.dtype.kind in "fc")
