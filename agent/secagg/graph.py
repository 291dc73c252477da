"""The SecAgg+ neighbour graph: k-regular, over a random ordering of the cohort.

Bell et al., CCS 2020, §3 replace the complete graph of Bonawitz et al. with a sparse graph of
degree k = O(log n). We use a Harary graph H(k, n) (Harary, "The maximum connectivity of a
graph", PNAS 48(7), 1962) on a permutation of the cohort drawn from a 256-bit seed that the
aggregator announces: position i is joined to positions i ± 1, …, i ± ⌊k/2⌋ (mod n), and for
odd k (n even) also to i + n/2. H(k, n) is k-regular and k-connected, so removing fewer than k
clients never splits the rest. Every client computes the same graph from (cohort, k, seed),
so the aggregator cannot show different clients different graphs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def permutation(cohort: Sequence[str], seed: bytes) -> list[str]:
    """The cohort ordered by SHA-256(seed ‖ agent_id): a uniformly random order for a random
    seed, identical for everyone who knows the seed."""
    return sorted(cohort, key=lambda a: hashlib.sha256(seed + a.encode()).digest())


def neighbours(cohort: Sequence[str], *, k: int, seed: bytes) -> dict[str, frozenset[str]]:
    """Each client's k neighbours.

    Args:
        cohort: distinct agent ids, n of them.
        k: the degree, 1 ≤ k ≤ n − 1, with n·k even.
        seed: the graph seed (32 bytes from the aggregator).

    Returns:
        agent id → its neighbours (k ids, never itself); the relation is symmetric.

    Raises:
        ValueError: repeated ids, k out of range, or n·k odd.
    """
    n = len(cohort)
    if len(set(cohort)) != n:
        raise ValueError("cohort ids must be distinct")
    if not 1 <= k <= n - 1 or (n * k) % 2:
        raise ValueError(f"no {k}-regular graph on {n} clients")
    order = permutation(cohort, seed)
    out: dict[str, set[str]] = {a: set() for a in order}
    for i, a in enumerate(order):
        for step in range(1, k // 2 + 1):
            out[a].add(order[(i + step) % n])
            out[a].add(order[(i - step) % n])
        if k % 2:
            out[a].add(order[(i + n // 2) % n])
    return {a: frozenset(v) for a, v in out.items()}
