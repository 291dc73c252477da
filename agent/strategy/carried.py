"""The integer arrays of a round's aggregate: the survivors' coordinate-wise lower median.

Integer and boolean arrays (a BatchNorm's int64 ``num_batches_tracked``, a step counter, a
mask) are never averaged as floats nor masked (``agent.strategy.update``): the strategy step
returns them bit-exact from the model in force. Left there, a counter would keep the initial
model's value for ever (a BatchNorm with ``momentum=None`` then restarts its cumulative mean
every round). So the new model's integer arrays are, element by element, the **lower
median** of what the round's survivors reported: always a value one of them reported, in the
array's own dtype (a sort, no float arithmetic), and, unlike the maximum or the mean, not
movable by a minority of the cohort (a device claiming 2^62 batches moves it by at most one
rank). The median, not the num_examples-weighted one: a counter says how far a model has
come, not how much data it saw.

Where the survivors' arrays come from (ARCHITECTURE.md §4):

- in the clear (sync ``PlainRound``, async ``buffer.Buffer``) from each update's weights;
- under SecAgg+ (sync, and each async buffer's secure round) from ``MaskedInput.carried``:
  each trainer sends its integer arrays beside its masked float vector, sealed to the
  aggregator and signed (``agent.roles.trainer.carried``), and the aggregator keeps them
  only for members whose masked input it counted
  (``agent.roles.aggregator.secure_carried``). The aggregator so learns each member's
  integer arrays (for a BatchNorm counter: the batches it trained so far), never a float
  value: the codec refuses a float array there (``agent.messages.codec``). A trainer with
  ``[trainer] reveal_integer_arrays = false`` sends none; when no survivor sent any, the
  model in force's values stay.

Cost: a copy of every counted member's integer arrays (n times their values, typically a few
counters per model) until the round closes; the float arrays are not kept (the streaming
fold stays O(model)).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.errors import RefusedError
from agent.plugin.api import Weights, is_averaged


def integer_arrays(weights: Sequence[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
    """The arrays of ``weights`` a round carries (every non-float one), in model order."""
    return [a for a in weights if not is_averaged(a)]


class CarriedValues:
    """The integer arrays each counted cohort member reported, by agent id.

    Args:
        current: the model in force (which arrays are carried: the non-float ones).
    """

    def __init__(self, current: Weights) -> None:
        self._carried = [i for i, a in enumerate(current) if not is_averaged(a)]
        self._like = [(current[i].shape, current[i].dtype) for i in self._carried]
        self._reported: dict[str, list[npt.NDArray[Any]]] = {}

    def add(self, agent_id: str, weights: Weights) -> None:
        """Keep a copy of ``agent_id``'s integer arrays (``weights`` shaped like the model;
        a second update from the same agent replaces the first)."""
        if self._carried:
            self.report(agent_id, [weights[i] for i in self._carried])

    def check(self, arrays: Sequence[npt.NDArray[Any]]) -> None:
        """``arrays`` are exactly the model's integer arrays' shapes and dtypes, in order.

        Raises:
            RefusedError: ``carried_mismatch``, with what differs.
        """
        got = [(a.shape, a.dtype) for a in arrays]
        if got != self._like:
            raise RefusedError(
                "carried_mismatch",
                f"{len(got)} integer arrays unlike the model's {len(self._like)}",
            )

    def report(self, agent_id: str, arrays: Sequence[npt.NDArray[Any]]) -> None:
        """Keep a copy of ``arrays``, ``agent_id``'s integer arrays in model order (checked
        by the caller: ``check``); a second report from the same agent replaces the first."""
        if self._carried:
            self._reported[agent_id] = [np.array(a, copy=True) for a in arrays]

    def reported(self, agent_id: str) -> bool:
        """True once ``agent_id``'s arrays are kept."""
        return agent_id in self._reported

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
