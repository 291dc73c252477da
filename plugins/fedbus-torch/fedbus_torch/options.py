"""The ``[plugin.options]`` every torch plugin takes, beside its task's own.

- ``device``: ``"auto"`` (default), ``"cpu"`` or ``"cuda"`` (``fedbus_torch.runtime``);
- ``threads``: intra-op CPU threads, 0 (default) for this agent's share of the machine;
- ``local_agents``: agents sharing this machine (default 1; ``fedbus demo`` sets it);
- ``model_seed``: the seed of the initial weights, the same on every agent (default 0).

A task's own options (``TorchTask.options``: name → default, ``None`` for required) are
checked for presence and unknown keys here and handed to its factories with the defaults
filled in; their values are the factories' to validate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from agent.errors import ConfigError, PluginError
from fedbus_torch.runtime import DEVICES

#: The common options and their defaults.
COMMON: Final[Mapping[str, Any]] = {
    "device": "auto",
    "threads": 0,
    "local_agents": 1,
    "model_seed": 0,
}


@dataclass(frozen=True, slots=True)
class TorchOptions:
    """The common options, validated; ``task`` holds the task's options with defaults."""

    device: str
    threads: int
    local_agents: int
    model_seed: int
    task: Mapping[str, Any]

    @classmethod
    def parse(cls, name: str, given: Mapping[str, Any], task: Mapping[str, Any]) -> TorchOptions:
        """Split and check ``given`` against the common options and the task's ``task``.

        Raises:
            PluginError: an unknown key, a missing required task option, or a bad value.
            ConfigError: an unknown ``device``.
        """
        known = {**COMMON, **task}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise PluginError(f"{name}: unknown option(s) {unknown}; known: {sorted(known)}")
        merged = {**known, **given}
        missing = sorted(k for k, v in merged.items() if v is None)
        if missing:
            raise PluginError(f"{name}: option(s) {missing} are required")
        device = merged["device"]
        if device not in DEVICES:
            raise ConfigError(
                f"{name}: [plugin.options] device must be one of {list(DEVICES)}, got {device!r}"
            )
        return cls(
            device=device,
            threads=_int(name, merged, "threads", 0),
            local_agents=_int(name, merged, "local_agents", 1),
            model_seed=_int(name, merged, "model_seed", 0),
            task={k: merged[k] for k in task},
        )


def _int(name: str, table: Mapping[str, Any], key: str, minimum: int) -> int:
    value = table[key]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PluginError(f"{name}: option {key!r} must be an int >= {minimum}, got {value!r}")
    return value


def config_int(name: str, config: Mapping[str, Any], key: str, minimum: int) -> int:
    """``config[key]`` (a fit config value) as an int >= ``minimum``.

    Raises:
        PluginError: missing, mistyped or too small.
    """
    if key not in config:
        raise PluginError(f"{name}: fit config {key!r} is missing")
    return _int(name, config, key, minimum)


def config_float(name: str, config: Mapping[str, Any], key: str, default: float) -> float:
    """``config[key]`` as a finite float >= 0 (``default`` when absent).

    Raises:
        PluginError: mistyped, negative or not finite.
    """
    value = config.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (0 <= value < float("inf"))
    ):
        raise PluginError(f"{name}: fit config {key!r} must be a finite number >= 0, got {value!r}")
    return float(value)
