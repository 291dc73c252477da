"""What the unmasked SecAgg+ sum can be when every survivor followed the protocol, and the
check the aggregator runs before it believes it (ARCHITECTURE.md §12).

An honest survivor u of s sends, per coordinate, q_u ∈ {0 … 2^b - 1} (its delta clipped to
[-c, c], scaled by w_u / W, quantized; ``agent.secagg.quantize``) and the weight word
w_u ∈ {1 … W}. So, before any float arithmetic:

1. every coordinate of the ring sum Σq is at most s·(2^b - 1): the ring has room for it
   (n·(2^b - 1) < 2^m by the choice of m), so a larger word is a value no honest cohort
   produces (e.g. a client that added 2^31 after masking);
2. the weight word Σw lies in [s, s·W].

And after decoding (weighted sum S = Σ w_u·x̃_u, total weight Σw, δ the quantization step):

3. every |S_j| ≤ c·Σw + s·δ·W (each survivor's values are at most c·w_u, plus one step
   of rounding each), so the mean S / Σw has every coordinate within c (+ the error);
4. with an L2 bound C the honest trainers clipped to: ‖S / Σw‖₂ ≤ C + √d·s·δ·W / Σw.

A failed check aborts the round (``SecAggAbortError("out_of_range")``) and the model in force
stays. What passes can still be wrong: a malicious client may send any in-range input (up to
the clipping bound, at full weight), or abort rounds at will, without being identified. Only
proofs that each input is well-formed (zero-knowledge input validation, e.g. ACORN, Bell et
al., "ACORN: Input Validation for Secure Aggregation", USENIX Security 2023) close that gap;
they are not built here.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.errors import SecAggAbortError
from agent.robust.bounds import sum_squares

OUT_OF_RANGE = "out_of_range"


def check_ring_sum(
    total: npt.NDArray[np.unsignedinteger[Any]], *, survivors: int, bits: int, max_weight: int
) -> None:
    """Checks 1 and 2 on the unmasked ring sum (shape (d + 1,): Σq ‖ Σw).

    Raises:
        SecAggAbortError: ``out_of_range``; the detail says which check and how far.
    """
    top = survivors * ((1 << bits) - 1)
    values = total[:-1]
    if values.size:
        worst = int(values.max())
        if worst > top:
            bad = int(np.count_nonzero(values > top))
            raise SecAggAbortError(
                OUT_OF_RANGE,
                f"{bad} of {values.size} coordinates of the sum exceed {top} "
                f"(largest {worst}): not what {survivors} quantized inputs can add up to",
            )
    weight = int(total[-1])
    if not survivors <= weight <= survivors * max_weight:
        raise SecAggAbortError(
            OUT_OF_RANGE,
            f"total weight {weight} outside [{survivors}, {survivors * max_weight}]",
        )


def check_mean(
    weighted_sum: npt.NDArray[np.float64],
    *,
    total_weight: int,
    survivors: int,
    clipping_range: float,
    step: float,
    max_weight: int,
    norm_bound: float = 0.0,
) -> None:
    """Checks 3 and 4 on the decoded weighted sum S (shape (d,), float64).

    Args:
        norm_bound: C, the L2 bound the trainers clipped to (0: none announced, check 4 off).

    Raises:
        SecAggAbortError: ``out_of_range``.
    """
    if total_weight < 1:
        raise SecAggAbortError(OUT_OF_RANGE, f"total weight {total_weight}")
    error = survivors * step * max_weight
    # max and min reduce without a model-sized temporary, and a NaN or inf propagates to them
    worst = (
        max(abs(float(weighted_sum.max())), abs(float(weighted_sum.min())))
        if weighted_sum.size
        else 0.0
    )
    if not math.isfinite(worst):
        raise SecAggAbortError(OUT_OF_RANGE, "the decoded sum is not finite")
    limit = clipping_range * total_weight + error
    if worst > limit:
        raise SecAggAbortError(
            OUT_OF_RANGE,
            f"a coordinate of the weighted sum is {worst:.4g}, above c·Σw + error = {limit:.4g}",
        )
    if norm_bound > 0:
        norm = math.sqrt(sum_squares(weighted_sum)) / total_weight
        allowed = norm_bound + math.sqrt(weighted_sum.size) * error / total_weight
        if norm > allowed:
            raise SecAggAbortError(
                OUT_OF_RANGE, f"the mean's L2 norm {norm:.4g} is above {allowed:.4g}"
            )
