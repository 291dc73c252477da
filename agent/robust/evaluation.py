"""Range checks of one federated-evaluation result (``metrics``) before it is averaged: a
result out of range never reaches ``metrics.json``.

A result is refused (``RefusedError``) when its ``loss`` is not finite (``not_finite``), its
``accuracy`` is not a number in [0, 1] (``accuracy_out_of_range``), or it claims more examples
than its agent declared at join (``examples_above_declared``; an agent that declared none is
held to ``max_weight``). Its weight in the mean is min(num_examples, max_weight), as for
updates. A device can still report a false accuracy in range on its own examples: its share
of the mean is what it declared.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from agent.errors import RefusedError

Scalar = bool | int | float | str


def check_result(
    *,
    loss: float,
    num_examples: int,
    metrics: Mapping[str, Scalar],
    declared: int,
    max_weight: int,
) -> int:
    """The result's weight (≤ ``max_weight``) when it may be averaged.

    Raises:
        RefusedError: ``not_finite``, ``accuracy_out_of_range`` or ``examples_above_declared``.
    """
    if not math.isfinite(loss):
        raise RefusedError("not_finite", f"loss {loss}")
    accuracy = metrics.get("accuracy")
    if accuracy is not None and (
        isinstance(accuracy, bool | str) or not 0.0 <= float(accuracy) <= 1.0
    ):
        raise RefusedError("accuracy_out_of_range", f"accuracy {accuracy!r} not in [0, 1]")
    limit = declared if declared > 0 else max_weight
    if num_examples > limit:
        raise RefusedError(
            "examples_above_declared", f"num_examples {num_examples} > {limit} declared"
        )
    return min(num_examples, max_weight)
