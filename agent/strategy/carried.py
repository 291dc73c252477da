"""The integer arrays of a plain round's aggregate: the cohort's coordinate-wise median.

Integer and boolean arrays (a BatchNorm's int64 ``num_batches_tracked``, a step counter, a
mask) are never averaged as floats nor masked (``agent.strategy.update``): the strategy step
returns them bit-exact from the model in force. Left there, a counter would keep the initial
model's value for ever (a BatchNorm with ``momentum=None`` then restarts its cumulative mean
every round). So in the clear, where the aggregator sees every survivor's arrays, the new
model's integer arrays are, element by element, the **lower median** of what the round's
survivors reported: always a value one of them reported, in the array's own dtype (a sort,
no float arithmetic), and, unlike the maximum or the mean, not movable by a minority of the
cohort (a device claiming 2^62 batches moves it by at most one rank). The median, not the
num_examples-weighted one: a counter says how far a model has come, not how much data it saw.

Under SecAgg+ the aggregator learns no survivor's arrays, only the masked sum of the float
ones, so there the integer arrays stay the model in force's.

Cost: a copy of every admitted update's integer arrays (n times their values, typically a few
counters per model) until the round closes; the float arrays are not kept (the streaming
fold stays O(model)).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.plugin.api import Weights, is_averaged


class CarriedValues:
    """The integer arrays each cohort member reported, by agent id.

    Args:
        current: the model in force (which arrays are carried: the non-float ones).
    """

    def __init__(self, current: Weights) -> None:
        self._carried = [i for i, a in enumerate(current) if not is_averaged(a)]
        self._reported: dict[str, list[npt.NDArray[Any]]] = {}

    def add(self, agent_id: str, weights: Weights) -> None:
        """Keep a copy of ``agent_id``'s integer arrays (``weights`` shaped like the model;
        a second update from the same agent replaces the first)."""
        if self._carried:
            self._reported[agent_id] = [np.array(weights[i], copy=True) for i in self._carried]

    def apply(self, weights: Weights, survivors: Iterable[str]) -> Weights:
        """``weights`` with each integer array replaced by the survivors' element-wise lower
        median (``weights`` unchanged when no survivor reported, or nothing is carried)."""
        values = [self._reported[s] for s in survivors if s in self._reported]
        if not values:
            return weights
        out = list(weights)
        for k, i in enumerate(self._carried):
            stacked = np.stack([v[k] for v in values])
            median = np.sort(stacked, axis=0)[(len(values) - 1) // 2]
            out[i] = median.astype(weights[i].dtype, copy=False)
        return out
