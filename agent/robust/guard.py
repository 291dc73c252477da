"""The model guard: the last check before a new global model is published (both paths).

A new model x' (from the strategy's step on the model in force x) is published only if every
value is finite in its own dtype (a float64 result cast to float32 can overflow to inf) and
‖x' - x‖₂ ≤ min(``max_model_change``, ``max_change_factor``·max(‖x‖₂, 1)) where set. A
model that fails is never broadcast: the round fails (``model_rejected``) and x stays.

Cost: one pass over both models, O(d) time, no copy beyond one array at a time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.errors import ModelRejectedError
from agent.robust.settings import RobustConfig


def check_model(
    before: Sequence[npt.NDArray[Any]], after: Sequence[npt.NDArray[Any]], settings: RobustConfig
) -> float:
    """Returns ‖after - before‖₂ when ``after`` may be published.

    Raises:
        ModelRejectedError: ``not_finite`` or ``change_above_bound``.
    """
    change = old = 0.0
    for a, b in zip(after, before, strict=True):
        if a.dtype.kind in "fc" and not bool(np.isfinite(a).all()):
            raise ModelRejectedError("not_finite", "NaN or infinity in the new model")
        with np.errstate(all="ignore"):
            b64 = np.asarray(b, np.float64).ravel()
            d = np.asarray(a, np.float64).ravel() - b64
            change += float(np.dot(d, d))
            old += float(np.dot(b64, b64))
    change, old = math.sqrt(change), math.sqrt(old)
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
