"""The two noises of ``agent.privacy``: Gaussian (central) and discrete Gaussian (distributed).

- Central DP: the aggregator adds N(0, σ²) to every coordinate of the survivors' sum
  (the Gaussian mechanism, Dwork and Roth, "The Algorithmic Foundations of Differential
  Privacy", 2014, Thm. A.1; in federated learning McMahan et al., "Learning Differentially
  Private Recurrent Language Models", ICLR 2018, Algorithm 1).
- Distributed DP: each agent adds an integer vector drawn from the discrete Gaussian
  N_Z(0, σ_u²), P[x] ∝ exp(−x²/(2σ_u²)) on Z, to its quantized update before masking
  (Kairouz, Liu and Steinke, "The Distributed Discrete Gaussian Mechanism for Federated
  Learning with Secure Aggregation", ICML 2021, Algorithm 1), so only the sum of all the
  survivors' shares is ever unmasked. The sampler is Canonne, Kamath and Steinke, "The
  Discrete Gaussian for Differential Privacy", NeurIPS 2020, Algorithm 3 (a discrete
  Laplace proposal with rejection), vectorised with numpy's floating-point generator: its
  output follows N_Z(0, σ_u²) up to float64 rounding; it is not the paper's exact-arithmetic
  sampler, so no claim is made against an observer of the generator's bits.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt


def gaussian(shape: int, stddev: float, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """N(0, stddev²) noise, shape (``shape``,), float64; zeros when ``stddev`` is 0."""
    if stddev < 0 or not math.isfinite(stddev):
        raise ValueError(f"stddev must be finite and non-negative, got {stddev}")
    if stddev == 0:
        return np.zeros(shape, np.float64)
    return rng.normal(0.0, stddev, shape)


def discrete_gaussian(shape: int, sigma: float, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """``shape`` independent draws of N_Z(0, σ²), int64 (CKS20, Algorithm 3).

    With t = ⌊σ⌋ + 1, draw Y from the discrete Laplace with scale t (the difference of two
    geometric variables with success probability 1 − e^(−1/t)) and accept it with
    probability exp(−(|Y| − σ²/t)² / (2σ²)); repeat for the rejected draws. Each round
    accepts at least about 40% of them, so a few passes suffice.

    Raises:
        ValueError: σ negative or not finite, or so large that int64 could overflow.
    """
    if sigma < 0 or not math.isfinite(sigma) or sigma > 2.0**50:
        raise ValueError(f"sigma must be in [0, 2^50], got {sigma}")
    out = np.zeros(shape, np.int64)
    if sigma == 0 or shape == 0:
        return out
    t = math.floor(sigma) + 1
    p = -math.expm1(-1.0 / t)  # 1 − e^(−1/t)
    pending = np.arange(shape)
    while pending.size:
        y = rng.geometric(p, pending.size) - rng.geometric(p, pending.size)
        keep = rng.random(pending.size) < np.exp(
            -((np.abs(y) - sigma**2 / t) ** 2) / (2 * sigma**2)
        )
        out[pending[keep]] = y[keep]
        pending = pending[~keep]
    return out
