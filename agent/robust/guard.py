"""The model guard: the last check before a new global model is published (both paths).

A new model x' (from the strategy's step on the model in force x) is published only if every
value is finite in its own dtype (a float64 result cast to float32 can overflow to inf) and
‖x' - x‖₂ ≤ min(``max_model_change``, ``max_change_factor``·max(‖x‖₂, 1)) where set. A
model that fails is never broadcast: the round fails (``model_rejected``) and x stays.

Cost: one pass over both models, O(d) time, no temporary beyond ``STEP`` values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.errors import ModelRejectedError
from agent.robust.bounds import STEP, delta_norms, sum_squares
from agent.robust.settings import RobustConfig


def _squares(array: npt.NDArray[Any]) -> float:
    """Σ x² in float64, ``STEP`` values at a time."""
    flat, total = np.asarray(array).reshape(-1), 0.0
    with np.errstate(all="ignore"):
        for start in range(0, flat.size, STEP):
            piece = np.asarray(flat[start : start + STEP], np.float64)
            total += sum_squares(piece)
    return total


def check_model(
    before: Sequence[npt.NDArray[Any]], after: Sequence[npt.NDArray[Any]], settings: RobustConfig
) -> float:
    """Returns ‖after - before‖₂ when ``after`` may be published.

    Raises:
        ModelRejectedError: ``not_finite`` or ``change_above_bound``.
    """
    for a in after:
        # min and max propagate NaN and reach ±inf: no model-sized boolean temporary
        if a.dtype.kind == "f" and a.size:
            finite = math.isfinite(float(a.max()) + float(a.min()))
        else:
            finite = a.dtype.kind != "c" or bool(np.isfinite(a).all())
        if not finite:
            raise ModelRejectedError("not_finite", "NaN or infinity in the new model")
    change, _ = delta_norms(before, after)
    old = math.sqrt(sum(_squares(b) for b in before))
    if not math.isfinite(change):
        raise ModelRejectedError("not_finite", "the change from the model in force overflows")
    limits = []
    if settings.max_model_change > 0:
        limits.append(settings.max_model_change)
    if settings.max_change_factor > 0:
        limits.append(settings.max_change_factor * max(old, 1.0))
    if limits and change > min(limits):
        raise ModelRejectedError(
            "change_above_bound", f"‖new - old‖₂ = {change:.4g} > {min(limits):.4g}"
        )
    return change
