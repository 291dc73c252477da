"""The strategy seam: one protocol for every server-side update rule, plain or SecAgg+.

A round's fit ends in one ``AggregatedUpdate`` (``agent.strategy.update``) whatever the
transport; a ``Strategy`` turns (model in force, that update) into the next model and keeps
its own optimizer state, which ``state()``/``load_state()`` expose as plain arrays so the
aggregator can persist it with the round (``rounds/NNNN/strategy.npz``, never pickled).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from agent.plugin.api import Weights, is_averaged
from agent.strategy.update import AggregatedUpdate, ClientResult, Delta, mean_update

#: A strategy's state: named float64 arrays (0-d for scalars), as saved in an ``.npz``.
StrategyState = dict[str, npt.NDArray[Any]]


class Strategy(Protocol):
    """A server optimizer over the round's mean delta."""

    def step(self, current: Weights, update: AggregatedUpdate) -> Weights:
        """The next model: arrays shaped and typed like ``current``; updates the state."""
        ...

    def state(self) -> StrategyState:
        """The optimizer state (a copy) as named plain arrays; empty when stateless."""
        ...

    def load_state(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        """Restore what ``state()`` returned (raises ``ValueError`` on a foreign layout)."""
        ...


class ServerOptimizer:
    """What every first-party strategy shares: ``aggregate`` over plain results."""

    def step(self, current: Weights, update: AggregatedUpdate) -> Weights:
        raise NotImplementedError

    def aggregate(self, current: Weights, results: Sequence[ClientResult]) -> Weights:
        """``step(current, mean_update(current, results))``: the plain path in one call.

        Raises:
            RoundError: nothing to average (no result, or Σ num_examples ≤ 0).
        """
        return self.step(current, mean_update(current, results))


def moved(current: Weights, step: Delta, *, spend: bool = False) -> Weights:
    """current + step, computed in float64, returned in the dtypes of ``current``; carried
    (non-float) arrays are returned unchanged, bit-exact (``agent.strategy.update``). With
    ``spend``, each array of ``step`` is replaced in the list by an empty one once added, so
    its memory goes while the next is added (``AggregatedUpdate.spendable``).

    Raises:
        ValueError: ``step`` has not one array per array of ``current``.
    """
    if len(step) != len(current):
        raise ValueError(f"a step of {len(step)} arrays for a model of {len(current)}")
    out = []
    for i, x in enumerate(current):
        out.append(_plus(x, step[i]) if is_averaged(x) else np.array(x))
        if spend:
            step[i] = np.empty(0, np.float64)
    return out


#: Values added per step by ``moved``: its float64 temporary stays at 2 MiB.
STEP = 1 << 18


def _plus(x: npt.NDArray[Any], s: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """(x + s) computed in float64, in x's dtype, ``STEP`` values at a time (no float64 copy
    of the whole array)."""
    out = np.empty(x.shape, x.dtype)
    flat_out, flat_x, flat_s = out.reshape(-1), np.asarray(x).reshape(-1), s.reshape(-1)
    scratch = np.empty(min(STEP, flat_x.size), np.float64)
    for start in range(0, flat_x.size, STEP):
        end = min(start + STEP, flat_x.size)
        piece = scratch[: end - start]
        np.add(flat_x[start:end], flat_s[start:end], out=piece, dtype=np.float64)
        flat_out[start:end] = piece  # cast as astype(x.dtype) does
    return out


def save_arrays(prefix: str, arrays: Sequence[npt.NDArray[Any]] | None) -> StrategyState:
    """``{prefix_0: a0, prefix_1: a1, ...}`` (copies); empty for None."""
    return {f"{prefix}_{i}": np.array(a, np.float64) for i, a in enumerate(arrays or [])}


def load_arrays(prefix: str, state: Mapping[str, npt.NDArray[Any]]) -> Delta | None:
    """The arrays ``save_arrays(prefix, ...)`` wrote, in order; None when there are none."""
    out: Delta = []
    while (key := f"{prefix}_{len(out)}") in state:
        out.append(np.array(state[key], np.float64))
    return out or None
