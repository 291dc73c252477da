"""The SecAgg+ neighbour graph: k-regular, over a random ordering of the cohort.

Bell et al., CCS 2020, §3 replace the complete graph of Bonawitz et al. with a sparse graph of
degree k = O(log n). We use a Harary graph H(k, n) (Harary, "The maximum connectivity of a
graph", PNAS 48(7), 1962) on a permutation of the cohort drawn from a 256-bit seed that the
aggregator announces: position i is joined to positions i ± 1, …, i ± ⌊k/2⌋ (mod n), and for
odd k (n even) also to i + n/2. H(k, n) is k-regular and k-connected, so removing fewer than k
clients never splits the rest. Every client computes the same graph from (cohort, k, seed),
so the aggregator cannot show different clients different graphs.

A client needs only its own row: ``neighbours_of`` ranks the cohort once (n hashes and a
sort, no per-node sets) and reads the k positions around its own, where ``neighbours``
builds all n rows (the server's graph, O(n·k)). Both read one ``_Ranking``, so a client's row
is by construction the server's; the ranking is cached per (cohort, seed), so the agents of
one fleet process rank a round's cohort once between them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache


def permutation(cohort: Sequence[str], seed: bytes) -> list[str]:
    """The cohort ordered by SHA-256(seed ‖ agent_id): a uniformly random order for a random
    seed, identical for everyone who knows the seed."""
    return list(_ranking(tuple(cohort), seed).order)


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
    ranking = _checked(cohort, k, seed)
    return {a: ranking.row(i, k) for i, a in enumerate(ranking.order)}


def neighbours_of(cohort: Sequence[str], agent_id: str, *, k: int, seed: bytes) -> frozenset[str]:
    """``neighbours(cohort, k=k, seed=seed)[agent_id]`` without building the other n − 1
    rows: O(n) hashes once per (cohort, seed), then O(k).

    Raises:
        ValueError: as ``neighbours``, or ``agent_id`` is not in the cohort.
    """
    ranking = _checked(cohort, k, seed)
    position = ranking.position.get(agent_id)
    if position is None:
        raise ValueError(f"{agent_id} is not in the cohort")
    return ranking.row(position, k)


@dataclass(frozen=True, slots=True)
class _Ranking:
    """The seeded order of one cohort and each member's position in it."""

    order: tuple[str, ...]
    position: dict[str, int]

    def row(self, i: int, k: int) -> frozenset[str]:
        """The neighbours of position ``i`` in H(k, n)."""
        order, n = self.order, len(self.order)
        near = [order[(i + step) % n] for step in range(1, k // 2 + 1)]
        near += [order[(i - step) % n] for step in range(1, k // 2 + 1)]
        if k % 2:
            near.append(order[(i + n // 2) % n])
        return frozenset(near)


def _checked(cohort: Sequence[str], k: int, seed: bytes) -> _Ranking:
    n = len(cohort)
    ranking = _ranking(tuple(cohort), seed)
    if len(ranking.position) != n:
        raise ValueError("cohort ids must be distinct")
    if not 1 <= k <= n - 1 or (n * k) % 2:
        raise ValueError(f"no {k}-regular graph on {n} clients")
    return ranking


@lru_cache(maxsize=16)
def _ranking(cohort: tuple[str, ...], seed: bytes) -> _Ranking:
    """The cohort ranked by SHA-256(seed ‖ agent_id) (a pure function of its arguments, so
    caching it shares nothing but time)."""
    order = tuple(sorted(cohort, key=lambda a: hashlib.sha256(seed + a.encode()).digest()))
    return _Ranking(order, {a: i for i, a in enumerate(order)})
