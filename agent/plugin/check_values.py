"""The rules the conformance suite applies to what a plugin returns, one function each.

Each raises ``RuleBrokenError`` with a message naming the broken rule (and, via ``from``,
the exception the plugin raised, if any); ``agent.plugin.check`` turns that into a failed
check. ``wire`` is how weights look to a receiver: encoded in a real message, decoded,
read-only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from agent.errors import FedbusError
from agent.messages import GlobalModel, decode, encode
from agent.messages.tensors import digest, to_arrays, to_tensors
from agent.plugin.api import Scalar, Weights


class RuleBrokenError(Exception):
    """A check's verdict: the plugin broke the rule the message states."""


def call(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``; anything it raises becomes a ``RuleBrokenError`` caused by it."""
    try:
        return fn(*args)
    except Exception as exc:
        raise RuleBrokenError(f"{getattr(fn, '__name__', 'call')}() raised {exc!r}") from exc


def arrays(value: object, what: str) -> Weights:
    """``value`` as weights: a list of numeric numpy arrays without NaN or infinity."""
    if not isinstance(value, list | tuple):
        raise RuleBrokenError(f"{what} must be a list of numpy arrays, got {type(value).__name__}")
    for k, a in enumerate(value):
        if not isinstance(a, np.ndarray):
            raise RuleBrokenError(f"{what}[{k}] is a {type(a).__name__}, not a numpy array")
        if a.dtype.kind not in "biuf":
            raise RuleBrokenError(f"{what}[{k}] has dtype {a.dtype}; weights must be numeric")
        if a.dtype.kind == "f" and not bool(np.isfinite(a).all()):
            raise RuleBrokenError(f"{what}[{k}] holds NaN or infinity")
    return list(value)


def describe_weights(weights: Weights) -> str:
    """A one-line summary: parameter count, dtypes and shapes of the first arrays."""
    shapes = ", ".join(f"{a.dtype} {a.shape}" for a in weights[:4])
    more = f", ... ({len(weights)} arrays)" if len(weights) > 4 else ""
    return f"{sum(a.size for a in weights):,} parameters: {shapes}{more}"


def wire(weights: Weights) -> Weights:
    """``weights`` as a receiver gets them: encoded in a message, decoded, read-only."""
    tensors = to_tensors(weights)
    body = GlobalModel(version=1, sha256=digest(tensors), tensors=tensors)
    message = decode(encode(body, federation="check", round=1, sender="check"))
    assert isinstance(message.body, GlobalModel)
    return to_arrays(message.body.tensors)


def round_trip(weights: Weights) -> str:
    """``weights`` come back from ``wire`` with the same dtypes, shapes and bytes."""
    try:
        back = wire(weights)
    except (ValueError, FedbusError) as exc:
        raise RuleBrokenError(f"the weights cannot travel: {exc}") from exc
    for k, (a, b) in enumerate(zip(weights, back, strict=True)):
        if a.shape != b.shape or a.dtype.newbyteorder("<") != b.dtype:
            raise RuleBrokenError(
                f"array {k} came back as {b.dtype} {b.shape}, sent {a.dtype} {a.shape}"
            )
        if a.tobytes() != np.ascontiguousarray(b, dtype=a.dtype).tobytes():
            raise RuleBrokenError(f"array {k} came back with different values")
    return f"{sum(len(t.data) for t in to_tensors(weights)):,} bytes of tensors"


def metrics(value: object, what: str) -> dict[str, Scalar]:
    """``value`` as metrics: a mapping of str to bool/int/float/str."""
    if not isinstance(value, Mapping):
        raise RuleBrokenError(f"{what} metrics must be a dict of str to scalar, got {value!r}")
    for key, v in value.items():
        if not isinstance(key, str) or not isinstance(v, bool | int | float | str):
            raise RuleBrokenError(
                f"{what} metric {key!r} = {v!r} is not a str → bool/int/float/str"
            )
    return dict(value)


def count(value: object, what: str, minimum: int) -> int:
    """``value`` as an example count: an int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise RuleBrokenError(f"{what} must be an int >= {minimum}, got {value!r}")
    return int(value)


def triple(value: object, what: str) -> tuple[Any, Any, Any]:
    """``value`` as the 3-tuple that ``fit`` and ``evaluate`` return."""
    if not isinstance(value, tuple) or len(value) != 3:
        raise RuleBrokenError(f"{what} must return a 3-tuple, got {type(value).__name__}")
    return value[0], value[1], value[2]


def pairs(pairs: list[tuple[np.dtype[Any], tuple[int, ...]]]) -> str:
    """``[float32 (64, 10), ...]`` for error messages."""
    return "[" + ", ".join(f"{d} {s}" for d, s in pairs) + "]"


def copies(weights: Weights) -> Weights:
    """Fresh writable copies of every array."""
    return [a.copy() for a in weights]
