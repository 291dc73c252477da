"""``[plugin.options]`` of ``digits-mlp``: which shard an agent holds and how it evaluates."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Final, get_args

from agent.errors import PluginError
from agent.plugin.onnx_session import Device
from fedbus_digits import mlp
from fedbus_digits.data import DEFAULT_MIN_EXAMPLES, DEFAULT_TEST_FRACTION, Partition

NAME: Final = "digits-mlp"
#: How ``evaluate`` computes the logits: numpy, or the exported ONNX graph in onnxruntime.
BACKENDS: Final = ("numpy", "onnxruntime")


@dataclass(frozen=True, slots=True)
class DigitsOptions:
    """The plugin options, as read from the agent's ``[plugin.options]`` TOML table.

    Attributes:
        agent_index: this agent's 0-based position in the federation, < ``num_agents``.
        num_agents: agents sharing the data; the same for every agent.
        partition: ``"iid"`` or ``"dirichlet"`` (label skew).
        alpha: Dirichlet concentration, > 0; smaller is more skewed.
        seed: the data seed (split, shards, test slices); the same for every agent.
        hidden: hidden layer widths; ``(64,)`` gives the 64-64-10 network.
        test_fraction: share of the data held out for testing, in (0, 1).
        model_seed: seed of the initial weights; the same for every agent.
        min_examples: the fewest training examples any agent may get.
        backend: ``"numpy"`` or ``"onnxruntime"`` (evaluate through the ONNX export, on the
            GPU when the ``gpu`` extra is installed and one is present; needs ``onnx``).
        device: onnxruntime's device: ``"auto"`` (GPU if usable, else CPU), ``"cpu"`` or
            ``"gpu"`` (an error without one).
    """

    agent_index: int
    num_agents: int
    partition: Partition = Partition.DIRICHLET
    alpha: float = 0.5
    seed: int = 0
    hidden: tuple[int, ...] = mlp.DEFAULT_HIDDEN
    test_fraction: float = DEFAULT_TEST_FRACTION
    model_seed: int = 0
    min_examples: int = DEFAULT_MIN_EXAMPLES
    backend: str = "numpy"
    device: Device = "auto"

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> DigitsOptions:
        """Decode and validate a TOML options table.

        Raises:
            PluginError: a missing, unknown, mistyped or out-of-range option.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise PluginError(f"{NAME}: unknown option(s) {unknown}; known: {sorted(known)}")
        for required in ("agent_index", "num_agents"):
            if required not in options:
                raise PluginError(f"{NAME}: option {required!r} is required")
        num_agents = int_option(options, "num_agents", minimum=1)
        agent_index = int_option(options, "agent_index", minimum=0)
        if agent_index >= num_agents:
            raise PluginError(
                f"{NAME}: option 'agent_index' must be < num_agents = {num_agents}, "
                f"got {agent_index}"
            )
        partition = options.get("partition", Partition.DIRICHLET.value)
        if not isinstance(partition, str) or partition not in {p.value for p in Partition}:
            raise PluginError(
                f"{NAME}: option 'partition' must be one of "
                f"{[p.value for p in Partition]}, got {partition!r}"
            )
        alpha = float_option(options, "alpha", default=0.5)
        if alpha <= 0:
            raise PluginError(f"{NAME}: option 'alpha' must be > 0, got {alpha}")
        test_fraction = float_option(options, "test_fraction", default=DEFAULT_TEST_FRACTION)
        if not 0 < test_fraction < 1:
            raise PluginError(
                f"{NAME}: option 'test_fraction' must be in (0, 1), got {test_fraction}"
            )
        hidden = options.get("hidden", list(mlp.DEFAULT_HIDDEN))
        if not isinstance(hidden, list | tuple) or not all(_is_int(h) and h >= 1 for h in hidden):
            raise PluginError(
                f"{NAME}: option 'hidden' must be a list of ints >= 1, got {hidden!r}"
            )
        backend = options.get("backend", "numpy")
        if backend not in BACKENDS:
            raise PluginError(
                f"{NAME}: option 'backend' must be one of {BACKENDS}, got {backend!r}"
            )
        device = options.get("device", "auto")
        if device not in get_args(Device):
            raise PluginError(
                f"{NAME}: option 'device' must be one of {get_args(Device)}, got {device!r}"
            )
        return cls(
            backend=backend,
            device=device,
            agent_index=agent_index,
            num_agents=num_agents,
            partition=Partition(partition),
            alpha=alpha,
            seed=int_option(options, "seed", default=0, minimum=0),
            hidden=tuple(hidden),
            test_fraction=test_fraction,
            model_seed=int_option(options, "model_seed", default=0, minimum=0),
            min_examples=int_option(
                options, "min_examples", default=DEFAULT_MIN_EXAMPLES, minimum=0
            ),
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def int_option(
    table: Mapping[str, Any], key: str, *, default: int | None = None, minimum: int
) -> int:
    """``table[key]`` as an int >= ``minimum``; integral floats (``2.0``) are accepted."""
    value = table.get(key, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not _is_int(value) or value < minimum:
        raise PluginError(f"{NAME}: {key!r} must be an int >= {minimum}, got {value!r}")
    return int(value)


def float_option(table: Mapping[str, Any], key: str, *, default: float) -> float:
    """``table[key]`` as a finite float (ints are accepted)."""
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PluginError(f"{NAME}: {key!r} must be a finite number, got {value!r}")
    return float(value)
