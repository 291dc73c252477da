"""Flower's values ↔ fedbus's: configs, metrics and arrays.

- Config (fedbus → Flower): fedbus's scalars (bool, int, float, str) are a subset of
  Flower's ``Scalar`` (bool, bytes, float, int, str); a config passes through unchanged.
- Metrics (Flower → fedbus): bool, int, float and str pass through; ``bytes``, which fedbus's
  wire scalars do not carry, become the string ``"base64:" + base64(value)`` under the same
  key (``decode_bytes`` reverses it); numpy scalars become Python ones. Anything else is an
  error naming the key.
- Arrays: what fedbus hands a plugin comes straight off the wire, read-only, while a Flower
  client may train in place (``p += ...``, ``torch.from_numpy``); the plugin passes them
  through Flower's own ``Parameters`` serialization, so the client gets fresh writable
  arrays (``fedbus_flower.plugin``).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, Final

import numpy as np

from agent.errors import PluginError
from agent.plugin.api import Scalar

#: The prefix of a bytes metric carried as a string.
BYTES_PREFIX: Final = "base64:"


def to_metrics(metrics: Mapping[str, Any], what: str) -> dict[str, Scalar]:
    """A Flower ``Metrics``/``Config`` dict as fedbus metrics (see the module docstring).

    Raises:
        PluginError: a key that is not a str, or a value that is no Flower scalar.
    """
    out: dict[str, Scalar] = {}
    for key, given in metrics.items():
        if not isinstance(key, str):
            raise PluginError(f"{what}: metric key {key!r} is not a str")
        value = given.item() if isinstance(given, np.generic) else given
        if isinstance(value, bytes):
            out[key] = BYTES_PREFIX + base64.b64encode(value).decode("ascii")
        elif isinstance(value, bool | int | float | str):
            out[key] = value
        else:
            raise PluginError(f"{what}: metric {key!r} = {value!r} is not a Flower Scalar")
    return out


def decode_bytes(value: Scalar) -> Scalar | bytes:
    """A metric as the Flower client returned it: ``"base64:..."`` back to bytes."""
    if isinstance(value, str) and value.startswith(BYTES_PREFIX):
        return base64.b64decode(value[len(BYTES_PREFIX) :], validate=True)
    return value
