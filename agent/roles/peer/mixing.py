"""One gossip average: a peer's model mixed with its neighbours' (ARCHITECTURE.md §14).

Decentralized parallel SGD (D-PSGD; Lian et al., "Can Decentralized Algorithms Outperform
Centralized Algorithms? A Case Study for Decentralized Parallel Stochastic Gradient
Descent", NeurIPS 2017, Algorithm 1): after its local step, peer i sets
x_i ← Σ_j W_ij x_j over itself and its neighbours, with the Metropolis-Hastings weights
(Xiao & Boyd, "Fast linear iterations for distributed averaging", 2004, §4.2)
W_ij = 1 / (1 + max(d_i, d_j)) for a neighbour j and W_ii = 1 - Σ_j W_ij. W is symmetric and
doubly stochastic, so on a connected graph every x_i converges to the mean. A neighbour whose
model did not arrive in time is left out of the sum and its weight stays with x_i (the row
still sums to 1; W is then symmetric only where both sides skipped alike).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from agent.plugin.api import Weights, is_averaged


@dataclass(frozen=True, slots=True)
class Neighbour:
    """A neighbour's model as received: its arrays (the plugin's order) and degree d_j."""

    weights: Weights
    degree: int


def metropolis_weight(own_degree: int, degree: int) -> float:
    """W_ij = 1 / (1 + max(d_i, d_j)) (Xiao & Boyd 2004, §4.2)."""
    return 1.0 / (1 + max(own_degree, degree))


def mix(own: Weights, own_degree: int, neighbours: Mapping[str, Neighbour]) -> Weights:
    """x_i' = W_ii x_i + Σ_j W_ij x_j over the floating-point arrays; integer arrays (a
    BatchNorm's step counter) are kept from ``own`` (``agent.plugin.api.is_averaged``).

    Args:
        own: this peer's arrays after its local step.
        own_degree: d_i, this peer's degree in the graph (not the count that answered).
        neighbours: the neighbours whose fresh model is used (agent id → model).

    Returns:
        The mixed arrays, each in the dtype and shape of ``own``'s.

    Raises:
        ValueError: a neighbour's arrays differ from ``own``'s in count or shape.
    """
    weights = {a: metropolis_weight(own_degree, n.degree) for a, n in neighbours.items()}
    self_weight = 1.0 - sum(weights.values())
    out: list[np.ndarray] = []
    for index, array in enumerate(own):
        if not is_averaged(array):
            out.append(array)
            continue
        total = self_weight * array.astype(np.float64)
        for agent_id, n in neighbours.items():
            theirs = _array(n.weights, index, array, agent_id)
            total += weights[agent_id] * theirs.astype(np.float64)
        out.append(total.astype(array.dtype))
    return out


def _array(weights: Sequence[np.ndarray], index: int, like: np.ndarray, who: str) -> np.ndarray:
    if len(weights) <= index or weights[index].shape != like.shape:
        raise ValueError(f"{who}'s model does not match ours at array {index}")
    return weights[index]
