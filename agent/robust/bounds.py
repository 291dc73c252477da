"""The bounds one plain update must respect (Bounded influence, ARCHITECTURE.md §12).

On arrival (``admit``), for an update of trained weights w_k against the model in force x:

- every value finite, and the delta Δ_k = w_k - x finite in float64 (else ``not_finite``);
- num_examples no more than the agent declared when it joined, where it declared a number
  (else ``weight_above_declared``); its weight is then min(num_examples, W), the same cap
  as SecAgg+'s ``max_weight``;
- with an absolute bound C (``max_update_norm``): ‖Δ_k‖₂ ≤ C, else clipped to
  Δ_k · C / ‖Δ_k‖₂ (norm clipping, Abadi et al., "Deep Learning with Differential Privacy",
  CCS 2016, §3.1) or refused (``norm_above_bound``), as ``on_norm`` says.

When the round closes (``relative_bound``): a scale-free bound, ``norm_factor`` times the median
of the round's delta norms (the median is the honest scale as long as fewer than half the
updates are an attacker's), applied the same way. It needs at least 3 updates.

Cost: one pass over each update (O(d) time, 2 MiB of float64 scratch; the delta is built
in float64, 8·d bytes, only when it is clipped).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.errors import RefusedError
from agent.mapped import release
from agent.robust.settings import OnViolation, RobustConfig

#: A model delta: float64 arrays shaped like the model's, in its order.
Delta = list[npt.NDArray[np.float64]]
#: Fewest updates for which a median norm means something.
MIN_FOR_MEDIAN = 3


@dataclass(frozen=True, slots=True)
class Admitted:
    """One update that passed ``admit``.

    Attributes:
        delta: Δ_k clipped (float64, shaped like the model) when its norm was above C;
            empty otherwise (the unclipped delta is never held, ``delta_norms``).
        weight: min(num_examples, max_weight), ≥ 1.
        norm: ‖Δ_k‖₂ as received (before clipping).
        clipped: whether ``delta`` was scaled down.
    """

    delta: Delta
    weight: int
    norm: float
    clipped: bool = False
    #: ‖Δ_k‖₂ of the floating-point arrays only, as received (``delta_norms``' second)
    float_norm: float = math.nan


def l2_norm(delta: Sequence[npt.NDArray[Any]]) -> float:
    """‖Δ‖₂ over all arrays (float64 accumulation)."""
    return math.sqrt(sum(float(np.vdot(d, d).real) for d in delta))


def sum_squares(x: npt.NDArray[np.float64]) -> float:
    """Σ x² of a 1-D float64 array, without BLAS: numpy's ``dot`` goes to OpenBLAS, whose
    threads spin against every other process on a busy machine (measured: 29 ms instead of
    0.1 ms for 2^18 values on 2 shared cores); ``einsum`` sums in one thread, no temporary."""
    return float(np.einsum("i,i->", x, x))


#: Values per step of ``delta_norms``: its float64 scratch is 2 MiB whatever the model.
STEP = 1 << 18


def delta_norms(
    base: Sequence[npt.NDArray[Any]], trained: Sequence[npt.NDArray[Any]]
) -> tuple[float, float]:
    """(‖trained - base‖₂ over every array, over the floating-point arrays only), in float64,
    without holding the delta: ``STEP`` values at a time (one pass, 2 MiB of scratch). The
    second is the norm of ``strategy.update.model_delta`` (zero for carried arrays). Either is
    inf or NaN when a value or the delta is not finite (or the sum of squares overflows)."""
    every = floats = 0.0
    scratch = np.empty(STEP, np.float64)
    with np.errstate(all="ignore"):
        for t, b in zip(trained, base, strict=True):
            flat_t, flat_b = np.asarray(t).reshape(-1), np.asarray(b).reshape(-1)
            part = 0.0
            for start in range(0, flat_b.size, STEP):
                end = min(start + STEP, flat_b.size)
                piece = scratch[: end - start]
                np.subtract(flat_t[start:end], flat_b[start:end], out=piece, dtype=np.float64)
                part += sum_squares(piece)
            release(t)  # a mapped update's pages, once measured (agent.mapped)
            every += part
            if b.dtype.kind == "f":
                floats += part
    return math.sqrt(every), math.sqrt(floats)


def admit(
    *,
    base: Sequence[npt.NDArray[Any]],
    trained: Sequence[npt.NDArray[Any]],
    num_examples: int,
    declared: int,
    settings: RobustConfig,
) -> Admitted:
    """Check one update (shapes already equal to ``base``'s) and bound it: one pass over it
    (``delta_norms``); the delta is built in float64 only when it is clipped.

    Args:
        base: the model in force x.
        trained: the update's weights w_k.
        num_examples: what the update claims.
        declared: what its agent declared at join (0: unknown, not checked).
        settings: the ``[aggregator.robust]`` table.

    Raises:
        RefusedError: ``not_finite``, ``weight_above_declared`` or ``norm_above_bound``.
    """
    if declared > 0 and num_examples > declared:
        raise RefusedError(
            "weight_above_declared", f"num_examples {num_examples} > {declared} declared at join"
        )
    # A NaN or inf anywhere in the delta makes its sum of squares NaN or inf; so does a sum
    # of squares that overflows: the one test covers all three.
    norm, float_norm = delta_norms(base, trained)
    if not math.isfinite(norm):
        raise RefusedError("not_finite", "NaN or infinity in the update or its delta")
    weight = max(1, min(num_examples, settings.max_weight))
    bound = settings.max_update_norm
    if bound > 0 and norm > bound:
        if settings.on_norm is OnViolation.REJECT:
            raise RefusedError("norm_above_bound", f"update norm {norm:.4g} > bound {bound:.4g}")
        delta: Delta = [
            np.asarray(t, np.float64) - np.asarray(b, np.float64)
            for t, b in zip(trained, base, strict=True)
        ]
        return Admitted(bounded(delta, norm, bound, settings.on_norm), weight, norm, True)
    return Admitted([], weight, norm, float_norm=float_norm)


def bounded(delta: Delta, norm: float, bound: float, on_norm: OnViolation) -> Delta:
    """``delta`` scaled to norm ``bound`` (``clip``).

    Raises:
        RefusedError: ``norm_above_bound`` (``reject``).
    """
    if on_norm is OnViolation.REJECT:
        raise RefusedError("norm_above_bound", f"update norm {norm:.4g} > bound {bound:.4g}")
    scale = bound / norm
    return [d * scale for d in delta]


def relative_bound(norms: Sequence[float], factor: float) -> float | None:
    """``factor`` times the median of ``norms``; None when off (factor 0) or fewer than
    ``MIN_FOR_MEDIAN`` norms, or when the median is 0 (nothing to scale by)."""
    if factor <= 0 or len(norms) < MIN_FOR_MEDIAN:
        return None
    median = float(np.median(np.asarray(norms, np.float64)))
    return factor * median if median > 0 else None


def bound_update(
    base: Sequence[npt.NDArray[Any]],
    trained: list[npt.NDArray[Any]],
    num_examples: int,
    *,
    declared: int,
    settings: RobustConfig,
) -> tuple[list[npt.NDArray[Any]], int, Admitted]:
    """``admit``, as the plain round keeps updates: the weights to average (``trained``, or
    base + the clipped delta in the model's dtypes), the capped weight, and the verdict.

    Raises:
        RefusedError: as ``admit``.
    """
    admitted = admit(
        base=base,
        trained=trained,
        num_examples=num_examples,
        declared=declared,
        settings=settings,
    )
    if not admitted.clipped:
        return trained, admitted.weight, admitted
    return rebuild(base, admitted.delta), admitted.weight, admitted


def rebuild(base: Sequence[npt.NDArray[Any]], delta: Delta) -> list[npt.NDArray[Any]]:
    """base + delta, each array in base's dtype."""
    return [
        (np.asarray(b, np.float64) + d).astype(b.dtype) for b, d in zip(base, delta, strict=True)
    ]


def clip_norm(flat: npt.NDArray[np.float64], bound: float) -> npt.NDArray[np.float64]:
    """``flat`` (shape (d,)) scaled down to L2 norm ``bound`` when above it (0: unchanged):
    what an honest SecAgg+ trainer does before quantizing (``norm_bound`` of the setup)."""
    if bound <= 0:
        return flat
    norm = math.sqrt(sum_squares(np.asarray(flat, np.float64).reshape(-1)))
    if not math.isfinite(norm) or norm <= bound:
        return flat
    return flat * (bound / norm)
