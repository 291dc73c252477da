"""Quantization onto the ring: clip, scale, stochastic rounding; and back for the sum.

A client's update x (float, any shape, flattened) with weight w ≤ W becomes

    v = clip(x, −c, c) · w / W                        ∈ [−c, c]
    q = ⌊(v + c) / δ + u⌋,  u ~ U[0, 1)               ∈ {0, …, 2^b − 1},  δ = 2c / (2^b − 1)

Stochastic rounding makes q unbiased: E[q·δ − c] = v (Gupta et al., "Deep Learning with
Limited Numerical Precision", ICML 2015, §3; the SecAgg+ quantizer of Bell et al., CCS 2020
§5). The server sees only Σq over the s survivors and recovers

    Σ w·x / W ≈ Σq · δ − s·c,   with |error| ≤ s·δ per coordinate (plus clipping).

The rounding noise comes from numpy's PCG64 seeded by the OS; it hides nothing, so it need not
be cryptographic (the masks are).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from agent.secagg.params import SecAggParams

FloatVector = npt.NDArray[np.floating[Any]]
RingVector = npt.NDArray[np.unsignedinteger[Any]]
#: Values (de)quantized per step: bounds the float64 scratch to 2 MiB.
STEP = 1 << 18


def quantize(
    update: FloatVector,
    *,
    weight: int,
    params: SecAggParams,
    rng: np.random.Generator | None = None,
) -> RingVector:
    """Map a flat update with its weight onto the ring.

    Args:
        update: shape (d,), any float dtype; NaN is not allowed.
        weight: the client's num_examples (capped at ``params.max_weight``), ≥ 1.
        params: clipping range c, bits b, ring word.
        rng: the rounding noise source (a fresh OS-seeded one by default).

    Returns:
        shape (d,), ``params.dtype``, every value in [0, 2^b − 1].

    Raises:
        ValueError: a NaN in ``update`` or a weight < 1.
    """
    out = np.empty(np.shape(update)[0], params.dtype)
    return quantize_into(out, update, weight=weight, params=params, rng=rng)


def quantize_into(
    out: RingVector,
    update: FloatVector,
    *,
    weight: int,
    params: SecAggParams,
    rng: np.random.Generator | None = None,
) -> RingVector:
    """``quantize`` written into ``out`` (shape (d,), ``params.dtype``; a slice of the masked
    vector), ``STEP`` values at a time: 2 MiB of float64 scratch instead of three float64
    copies of the update, and the same values (the rounding noise is drawn in the same
    order). Returns ``out``; raises as ``quantize`` (``out`` then partly written)."""
    quantizer = Quantizer(params, weight=weight, rng=rng)
    flat = np.asarray(update).reshape(-1)
    if out.shape != flat.shape:
        raise ValueError(f"out has shape {out.shape}, the update {flat.shape}")
    scratch = np.empty(min(STEP, flat.size), np.float64)
    for start in range(0, flat.size, STEP):
        end = min(start + STEP, flat.size)
        y = scratch[: end - start]
        np.copyto(y, flat[start:end])
        quantizer.into(out[start:end], y)
    return out


class Quantizer:
    """``quantize`` block by block: ``into(out, values)`` maps the next block of an update
    (float64, overwritten) onto the ring. Blocks taken in order draw the rounding noise in
    the order one ``quantize`` of the whole update would (``Generator.random`` is a stream).

    Raises (constructor):
        ValueError: a weight < 1.
    """

    def __init__(
        self, params: SecAggParams, *, weight: int, rng: np.random.Generator | None = None
    ) -> None:
        if weight < 1:
            raise ValueError(f"weight must be at least 1, got {weight}")
        self._rng = rng if rng is not None else np.random.default_rng()
        self._c = params.clipping_range
        scale = min(weight, params.max_weight) / params.max_weight
        self._factor = scale / params.step
        self._shift = self._c / params.step
        self._top = (1 << params.quantization_bits) - 1
        self._noise = np.empty(0, np.float64)

    def into(self, out: RingVector, values: FloatVector) -> None:
        """out ← q(values), shape (n,) each; ``values`` (float64) is used as scratch.

        Raises:
            ValueError: a NaN in ``values``.
        """
        n = values.shape[0]
        if self._noise.shape[0] < n:
            self._noise = np.empty(n, np.float64)
        y = values
        c = self._c
        np.clip(y, -c, c, out=y)
        if np.isnan(y).any():
            raise ValueError("cannot quantize NaN")
        # y ← (y·scale + c) / δ + u, in place; float64 holds 2^b exactly for b ≤ 52.
        y *= self._factor
        y += self._shift
        u = self._noise[:n]
        self._rng.random(n, out=u)
        y += u
        np.floor(y, out=y)
        np.clip(y, 0, self._top, out=y)
        out[:] = y


def weight_word(weight: int, params: SecAggParams) -> int:
    """The integer that carries a client's weight in the ring: min(weight, W)."""
    if weight < 1:
        raise ValueError(f"weight must be at least 1, got {weight}")
    return min(weight, params.max_weight)


def dequantize_sum(total: RingVector, *, survivors: int, params: SecAggParams) -> FloatVector:
    """Σ w·x / W from the ring sum of ``survivors`` quantized updates.

    Args:
        total: shape (d,), ``params.dtype``: Σq mod 2^m (no wrap by the choice of m).

    Returns:
        shape (d,), float64.
    """
    return dequantize_into(np.empty(total.shape, np.float64), total, survivors, params)


def dequantize_into(
    out: FloatVector, total: RingVector, survivors: int, params: SecAggParams, scale: float = 1.0
) -> FloatVector:
    """``dequantize_sum`` times ``scale`` written into ``out`` (shape (d,), float64), ``STEP``
    words at a time: no temporary beyond ``out`` itself. Returns ``out``."""
    shift = survivors * params.clipping_range
    for start in range(0, total.shape[0], STEP):
        piece = out[start : start + STEP]
        np.multiply(total[start : start + STEP], params.step, out=piece, dtype=np.float64)
        piece -= shift
        if scale != 1.0:
            piece *= scale
    return out


def error_bound(survivors: int, params: SecAggParams) -> float:
    """Largest |dequantize_sum − Σ w·clip(x)/W| per coordinate: one step per survivor."""
    return survivors * params.step
