"""The breast-cancer data: load, split, standardise, shard over agents.

scikit-learn's copy of the Wisconsin Diagnostic Breast Cancer data set (Street, Wolberg &
Mangasarian 1993; UCI): 569 tumours, 30 real-valued features computed from a fine-needle
aspirate image, label 0 = malignant (212) and 1 = benign (357). It ships inside the
scikit-learn wheel; nothing is downloaded.

Every agent runs the same deterministic recipe with the same ``seed``: a stratified split
(``test_fraction`` of each class held out), features standardised with the mean and standard
deviation of the *training split* (constants every agent computes identically; in a real
deployment they would be agreed beforehand or computed by secure aggregation), the training
split cut over ``num_agents`` agents (IID, or Dirichlet(``alpha``) label skew), and the test
split cut into disjoint IID slices so that the num_examples-weighted mean of the agents'
evaluations is the evaluation on the whole test set.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IndexArray = npt.NDArray[np.int64]
NUM_FEATURES = 30


@dataclass(frozen=True, slots=True)
class Split:
    """Examples ``x`` float32 ``(n, 30)`` (standardised) and labels ``y`` int64 ``(n,)``."""

    x: FloatArray
    y: IndexArray


@cache
def load_breast_cancer() -> tuple[FloatArray, IndexArray]:
    """All 569 examples: ``x`` float32 ``(569, 30)`` raw features, ``y`` int64 ``(569,)``."""
    from sklearn.datasets import load_breast_cancer as sklearn_load  # type: ignore[import-untyped]

    bunch = sklearn_load()
    x = np.asarray(bunch.data, dtype=np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def stratified_split(
    y: IndexArray, *, test_fraction: float, seed: int
) -> tuple[IndexArray, IndexArray]:
    """Sorted train and test indices; each class sends ``round(test_fraction * n_c)`` to test."""
    rng = np.random.default_rng([seed, 0])
    test = [
        rng.permutation(np.flatnonzero(y == c))[: int(test_fraction * np.sum(y == c) + 0.5)]
        for c in np.unique(y)
    ]
    test_idx = np.sort(np.concatenate(test)).astype(np.int64)
    return np.setdiff1d(np.arange(len(y), dtype=np.int64), test_idx), test_idx


def shards(
    y: IndexArray, num_agents: int, *, partition: str, alpha: float, seed: int, min_examples: int
) -> list[IndexArray]:
    """Positions ``range(len(y))`` split over agents: ``"iid"`` (shuffled, near-equal) or
    ``"dirichlet"`` (each class spread with proportions ~ Dir(alpha), redrawn up to 100 times
    until every agent has ``min_examples``; IID if no draw qualifies).

    Raises:
        ValueError: fewer than ``num_agents * min_examples`` examples.
    """
    if num_agents * min_examples > len(y):
        raise ValueError(f"{len(y)} examples cannot give {num_agents} agents {min_examples} each")
    rng = np.random.default_rng([seed, 1])
    if partition == "dirichlet":
        for _ in range(100):
            parts: list[list[IndexArray]] = [[] for _ in range(num_agents)]
            for c in np.unique(y):
                members = rng.permutation(np.flatnonzero(y == c))
                cuts = np.cumsum(rng.dirichlet(np.full(num_agents, alpha)))[:-1] * len(members)
                for k, piece in enumerate(np.split(members, cuts.astype(np.int64))):
                    parts[k].append(piece)
            drawn = [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
            if min(len(s) for s in drawn) >= min_examples:
                return drawn
    order = rng.permutation(len(y)).astype(np.int64)
    return [np.sort(s) for s in np.array_split(order, num_agents)]


def agent_data(
    agent_index: int,
    num_agents: int,
    *,
    partition: str,
    alpha: float,
    seed: int,
    test_fraction: float,
    min_examples: int,
) -> tuple[Split, Split]:
    """This agent's standardised train shard and test slice.

    Raises:
        ValueError: see ``shards``.
    """
    x, y = load_breast_cancer()
    train_idx, test_idx = stratified_split(y, test_fraction=test_fraction, seed=seed)
    mean = x[train_idx].mean(axis=0)
    std = x[train_idx].std(axis=0) + 1e-6
    z = ((x - mean) / std).astype(np.float32)
    mine = shards(
        y[train_idx],
        num_agents,
        partition=partition,
        alpha=alpha,
        seed=seed,
        min_examples=min_examples,
    )[agent_index]
    order = np.random.default_rng([seed, 2]).permutation(len(test_idx))
    test_mine = np.sort(np.array_split(order, num_agents)[agent_index])
    train = train_idx[mine]
    test = test_idx[test_mine]
    return Split(z[train], y[train]), Split(z[test], y[test])
