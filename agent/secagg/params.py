"""SecAgg+ parameters: the neighbour degree k, the reconstruction threshold t, and the ring.

The defaults follow Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead", CCS 2020, §3-4: every client shares its secrets with k = O(log n) neighbours
instead of all n−1 (k = n−1 is the complete graph, i.e. Bonawitz et al., CCS 2017).

- ``default_neighbours(n)``: the smallest k ≥ ⌈2·log2 n⌉ for which the correctness bound
  holds at the design dropout rate: with t = ⌊k/2⌋+1 and each client dropping independently
  with probability ``DESIGN_DROPOUT`` (10%), the union bound n·P[Bin(k, 0.1) > k − t] is below
  ``DESIGN_ABORT`` (10⁻³); capped at n−1. For n = 100 that is k = 19, t = 10.
- ``default_threshold(k)`` = ⌊k/2⌋+1: the smallest t that keeps the server from collecting both
  a client's self-mask seed and its mask key (each neighbour reveals one or the other, so two
  disjoint sets of t shares cannot exist among k neighbours when 2t > k).
- The ring is Z_2^m with m ∈ {32, 64}: every masked value is one uint32 (or uint64) word and
  wrap-around is numpy's. m is the smallest word for which the sum of n quantized values,
  each < 2^b, cannot wrap (n·(2^b − 1) < 2^m), and likewise the sum of the weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.errors import ConfigError

#: Dropout rate the default k is designed for.
DESIGN_DROPOUT = 0.1
#: Largest acceptable abort probability (union bound over clients) at ``DESIGN_DROPOUT``.
DESIGN_ABORT = 1e-3
#: Quantization never uses more bits than this: float32 updates have 24 significant bits.
MAX_AUTO_BITS = 24


def binomial_tail(k: int, p: float, more_than: int) -> float:
    """P[X > more_than] for X ~ Binomial(k, p)."""
    return sum(math.comb(k, j) * p**j * (1 - p) ** (k - j) for j in range(more_than + 1, k + 1))


def default_threshold(k: int) -> int:
    """t = ⌊k/2⌋ + 1 (see the module docstring)."""
    return k // 2 + 1


def abort_bound(n: int, k: int, t: int, dropout: float = DESIGN_DROPOUT) -> float:
    """Union bound on the probability that some client keeps fewer than t live neighbours
    when each of its k neighbours drops independently with probability ``dropout``."""
    return min(1.0, n * binomial_tail(k, dropout, k - t))


def default_neighbours(n: int) -> int:
    """The default degree k for a cohort of ``n`` (see the module docstring).

    Raises:
        ValueError: n < 2.
    """
    if n < 2:
        raise ValueError("a cohort needs at least 2 clients")
    k = max(2, math.ceil(2 * math.log2(n)))
    while k < n - 1 and abort_bound(n, k, default_threshold(k)) >= DESIGN_ABORT:
        k += 1
    k = min(k, n - 1)
    if k % 2 and n % 2:
        k += 1  # a k-regular graph on n nodes needs n·k even; k+1 ≤ n−1 since n is odd
    return k


@dataclass(frozen=True, slots=True)
class SecAggParams:
    """The parameters of one SecAgg+ round, as the aggregator announces them.

    Attributes:
        num_clients: cohort size n.
        num_neighbours: degree k of the neighbour graph, 1 ≤ k ≤ n−1 (k = n−1: every pair).
        threshold: Shamir reconstruction threshold t, k/2 < t ≤ k.
        clipping_range: c > 0; every coordinate of an update is clipped to [−c, c].
        quantization_bits: b; [−c, c] is mapped onto the integers 0 … 2^b − 1.
        ring_bits: m ∈ {32, 64}; arithmetic is in Z_2^m (uint32 / uint64 words).
        max_weight: W; a client's weight is min(num_examples, W).
    """

    num_clients: int
    num_neighbours: int
    threshold: int
    clipping_range: float
    quantization_bits: int
    ring_bits: int
    max_weight: int

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem is not None:
            raise ConfigError(f"insecure or unusable SecAgg+ parameters: {problem}")

    @property
    def dtype(self) -> np.dtype[np.unsignedinteger]:
        """The ring's word: uint32 or uint64."""
        return np.dtype(np.uint32 if self.ring_bits == 32 else np.uint64)

    def problem(self) -> str | None:  # noqa: PLR0911 - one return per rule reads best
        """Why these parameters cannot be secure or cannot reconstruct, or None."""
        n, k, t = self.num_clients, self.num_neighbours, self.threshold
        if n < 3:
            return (
                f"a cohort of {n} cannot hide an update: the sum of two reveals each to the other"
            )
        if not 2 <= k <= n - 1:
            return f"num_neighbours={k} must be between 2 and cohort size − 1 = {n - 1}"
        if (n * k) % 2:
            return f"no {k}-regular graph on {n} clients exists (n·k is odd); use k = {k + 1}"
        if t > k:
            return f"reconstruction_threshold={t} > num_neighbours={k}: nothing could be unmasked"
        if 2 * t <= k:
            return (
                f"reconstruction_threshold={t} must exceed num_neighbours/2 = {k / 2}, or the "
                "server could collect both a client's self-mask seed and its mask key"
            )
        if t < 2:
            return "reconstruction_threshold must be at least 2: one share would be the secret"
        if self.ring_bits not in (32, 64):
            return f"ring_bits={self.ring_bits} must be 32 or 64"
        if not 1 <= self.quantization_bits <= 62:
            return f"quantization_bits={self.quantization_bits} must be between 1 and 62"
        if n * ((1 << self.quantization_bits) - 1) >= 1 << self.ring_bits:
            return (
                f"{n} clients × {self.quantization_bits}-bit values can wrap Z_2^{self.ring_bits}"
            )
        if n * self.max_weight >= 1 << self.ring_bits:
            return f"{n} clients × max_weight={self.max_weight} can wrap Z_2^{self.ring_bits}"
        if not (self.clipping_range > 0 and math.isfinite(self.clipping_range)):
            return f"clipping_range={self.clipping_range} must be a positive finite number"
        if self.max_weight < 1:
            return f"max_weight={self.max_weight} must be at least 1"
        return None

    @property
    def step(self) -> float:
        """The quantization step δ = 2c / (2^b − 1), in the update's units."""
        return 2 * self.clipping_range / ((1 << self.quantization_bits) - 1)

    def zeros(self, length: int) -> npt.NDArray[np.unsignedinteger]:
        """A zero vector of the ring."""
        return np.zeros(length, dtype=self.dtype)


def resolve(
    n: int,
    *,
    num_neighbours: int = 0,
    threshold: int = 0,
    clipping_range: float = 8.0,
    quantization_bits: int = 0,
    max_weight: int = 1000,
) -> SecAggParams:
    """Concrete parameters for a cohort of ``n``; 0 means "the default" for k, t and b.

    The default b is the most bits (≤ ``MAX_AUTO_BITS``) for which n values fit a 32-bit
    ring; an explicit b that does not fit 32 bits moves the ring to 64 bits.

    Raises:
        ConfigError: the result cannot be secure or cannot reconstruct; the message says why.
    """
    if n < 3:
        raise ConfigError(
            f"insecure or unusable SecAgg+ parameters: a cohort of {n} cannot hide an update"
        )
    k = min(num_neighbours, n - 1) if num_neighbours else default_neighbours(n)
    t = threshold or default_threshold(k)
    bits = quantization_bits or min(MAX_AUTO_BITS, 32 - math.ceil(math.log2(n + 1)))
    fits_32 = n * ((1 << bits) - 1) < 1 << 32 and n * max_weight < 1 << 32
    return SecAggParams(
        num_clients=n,
        num_neighbours=k,
        threshold=t,
        clipping_range=clipping_range,
        quantization_bits=bits,
        ring_bits=32 if fits_32 else 64,
        max_weight=max_weight,
    )
