"""The digits data: loading, a stratified train/test split, shards per agent, test slices.

Every agent of a federation runs the same deterministic recipe with the same ``seed`` and
so agrees, without talking, on who holds which examples:

1. ``load_digits`` — scikit-learn's copy of the UCI optical digits test set (1,797 images of
   8 x 8 pixels, values 0-16), shipped inside the scikit-learn wheel; nothing is downloaded.
   Pixels are scaled to [0, 1] by dividing by 16.
2. ``stratified_split`` — a train/test split that keeps each class's share.
3. ``shard_indices`` — the train part split over ``num_agents``: ``iid`` (shuffled,
   near-equal) or ``dirichlet`` label skew.
4. ``test_slice`` — the test part split IID over the agents, so that the num_examples-weighted
   mean of the agents' evaluations equals the evaluation on the whole test set.

Each step draws from its own stream, ``numpy.random.default_rng([seed, step])``, so changing
one step (say, the partition) never changes another (the train/test split).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from typing import Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IndexArray = npt.NDArray[np.int64]

#: How many times a Dirichlet partition is redrawn before the fallback rebalancing.
MAX_DIRICHLET_DRAWS: Final = 100
DEFAULT_MIN_EXAMPLES: Final = 10
DEFAULT_TEST_FRACTION: Final = 0.2

_SPLIT_STREAM: Final = 0
_PARTITION_STREAM: Final = 1
_TEST_SLICE_STREAM: Final = 2


class Partition(StrEnum):
    """How the train set is split over agents."""

    IID = "iid"
    DIRICHLET = "dirichlet"


@dataclass(frozen=True, slots=True)
class Dataset:
    """Examples and labels.

    Attributes:
        x: float32, shape ``(n, 64)``, pixel intensities in [0, 1].
        y: int64, shape ``(n,)``, digit labels 0-9.
    """

    x: FloatArray
    y: IndexArray

    def __len__(self) -> int:
        """The number of examples ``n``."""
        return len(self.y)

    def subset(self, indices: IndexArray) -> Dataset:
        """The examples at ``indices`` (a copy)."""
        return Dataset(x=self.x[indices], y=self.y[indices])


@dataclass(frozen=True, slots=True)
class AgentData:
    """What one agent trains and evaluates on."""

    train: Dataset
    test: Dataset


@cache
def load_digits() -> Dataset:
    """All 1,797 digits: ``x`` float32 ``(1797, 64)`` in [0, 1], ``y`` int64 ``(1797,)``.

    Loaded once per process; the arrays are read-only. Source: Alpaydin & Kaynak 1998,
    UCI "Optical Recognition of Handwritten Digits", via ``sklearn.datasets.load_digits``.
    """
    # scikit-learn ships no type information; ``bunch`` is read through np.asarray below.
    from sklearn.datasets import load_digits as sklearn_load_digits  # type: ignore[import-untyped]

    bunch = sklearn_load_digits()
    x = (np.asarray(bunch.data, dtype=np.float64) / 16.0).astype(np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    x.flags.writeable = False
    y.flags.writeable = False
    return Dataset(x=x, y=y)


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def stratified_split(
    y: IndexArray, *, test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = 0
) -> tuple[IndexArray, IndexArray]:
    """Train and test indices (sorted, disjoint, covering ``range(len(y))``).

    Each class ``c`` with ``n_c`` examples sends ``round(test_fraction * n_c)`` (half rounds
    up) of them, chosen at random, to the test part.

    Raises:
        ValueError: ``test_fraction`` not strictly between 0 and 1, or ``seed < 0``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be strictly between 0 and 1, got {test_fraction}")
    rng = _rng(seed, _SPLIT_STREAM)
    test_parts = []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        test_parts.append(members[: math.floor(test_fraction * len(members) + 0.5)])
    test = np.sort(np.concatenate(test_parts)).astype(np.int64)
    train = np.setdiff1d(np.arange(len(y), dtype=np.int64), test)
    return train, test


def _check_capacity(n: int, num_agents: int, min_examples: int) -> None:
    if num_agents < 1:
        raise ValueError(f"num_agents must be >= 1, got {num_agents}")
    if min_examples < 0:
        raise ValueError(f"min_examples must be >= 0, got {min_examples}")
    if num_agents * min_examples > n:
        raise ValueError(
            f"{n} examples cannot give each of {num_agents} agents {min_examples} examples"
        )


def iid_shards(
    n: int, num_agents: int, *, seed: int = 0, min_examples: int = DEFAULT_MIN_EXAMPLES
) -> list[IndexArray]:
    """``range(n)`` shuffled and cut into ``num_agents`` shards whose sizes differ by <= 1.

    Returns:
        One sorted int64 index array per agent.

    Raises:
        ValueError: ``num_agents < 1`` or fewer than ``num_agents * min_examples`` examples.
    """
    _check_capacity(n, num_agents, min_examples)
    order = _rng(seed, _PARTITION_STREAM).permutation(n).astype(np.int64)
    return [np.sort(s) for s in np.array_split(order, num_agents)]


def dirichlet_shards(
    y: IndexArray,
    num_agents: int,
    *,
    alpha: float,
    seed: int = 0,
    min_examples: int = DEFAULT_MIN_EXAMPLES,
) -> list[IndexArray]:
    """Label-skewed shards: each class is spread over agents with proportions ~ Dir(alpha).

    For every class ``c`` the scheme draws ``p ~ Dirichlet(alpha * 1_num_agents)`` and gives
    agent ``k`` the next ``floor(n_c * cumsum(p)[k]) - floor(n_c * cumsum(p)[k-1])`` of the
    shuffled examples of ``c``. Small ``alpha`` (e.g. 0.1) gives each agent few classes;
    large ``alpha`` approaches IID. This is the per-class variant popularised by Yurochkin
    et al. 2019 ("Bayesian Nonparametric Federated Learning of Neural Networks") and Li et al.
    2022 ("Federated Learning on Non-IID Data Silos: An Experimental Study", NIID-Bench),
    after the Dirichlet label-skew of Hsu, Qi & Brown 2019 ("Measuring the Effects of
    Non-Identical Data Distribution for Federated Visual Classification", arXiv:1909.06335).

    ``min_examples``: the whole draw is repeated (continuing the same generator) until every
    shard has at least ``min_examples`` examples, at most ``MAX_DIRICHLET_DRAWS`` times. If no
    draw qualifies, the draw with the largest smallest shard (the earliest among equals) is
    rebalanced: while some shard is short, the lowest-indexed short shard takes the
    highest-indexed example of the currently largest shard (lowest agent index among equals).

    Returns:
        One sorted int64 index array (positions in ``y``) per agent; disjoint, covering.

    Raises:
        ValueError: ``alpha`` not a finite number > 0, ``num_agents < 1``, or fewer than
            ``num_agents * min_examples`` examples.
    """
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha}")
    _check_capacity(len(y), num_agents, min_examples)
    rng = _rng(seed, _PARTITION_STREAM)
    classes = [np.flatnonzero(y == c).astype(np.int64) for c in np.unique(y)]
    best: list[IndexArray] = []
    for _ in range(MAX_DIRICHLET_DRAWS):
        shards = _dirichlet_draw(classes, num_agents, alpha, rng)
        smallest = min(len(s) for s in shards)
        if smallest >= min_examples:
            return shards
        if not best or smallest > min(len(s) for s in best):
            best = shards
    return _rebalance(best, min_examples)


def _dirichlet_draw(
    classes: list[IndexArray], num_agents: int, alpha: float, rng: np.random.Generator
) -> list[IndexArray]:
    parts: list[list[IndexArray]] = [[] for _ in range(num_agents)]
    for members in classes:
        shuffled = rng.permutation(members)
        proportions = rng.dirichlet(np.full(num_agents, alpha))
        cuts = np.floor(np.cumsum(proportions)[:-1] * len(shuffled)).astype(np.int64)
        for k, piece in enumerate(np.split(shuffled, cuts)):
            parts[k].append(piece)
    return [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]


def _rebalance(shards: list[IndexArray], min_examples: int) -> list[IndexArray]:
    held = [list(s) for s in shards]
    while True:
        sizes = [len(h) for h in held]
        short = [k for k, size in enumerate(sizes) if size < min_examples]
        if not short:
            return [np.array(sorted(h), dtype=np.int64) for h in held]
        donor = int(np.argmax(sizes))
        held[short[0]].append(held[donor].pop())


def shard_indices(
    y: IndexArray,
    num_agents: int,
    *,
    partition: Partition,
    alpha: float = 0.5,
    seed: int = 0,
    min_examples: int = DEFAULT_MIN_EXAMPLES,
) -> list[IndexArray]:
    """Split positions ``range(len(y))`` over agents by ``partition`` (``alpha`` for Dirichlet).

    Raises:
        ValueError: see ``iid_shards`` and ``dirichlet_shards``.
    """
    if partition is Partition.IID:
        return iid_shards(len(y), num_agents, seed=seed, min_examples=min_examples)
    return dirichlet_shards(y, num_agents, alpha=alpha, seed=seed, min_examples=min_examples)


def test_slice(n_test: int, agent_index: int, num_agents: int, *, seed: int) -> IndexArray:
    """Agent ``agent_index``'s share of ``range(n_test)``: an IID slice, sorted.

    The slices of agents ``0 .. num_agents - 1`` are disjoint, cover ``range(n_test)``, and
    differ in size by at most one (a slice is empty when ``num_agents > n_test``).

    Raises:
        ValueError: ``agent_index`` outside ``[0, num_agents)``.
    """
    if not 0 <= agent_index < num_agents:
        raise ValueError(f"agent_index must be in [0, {num_agents}), got {agent_index}")
    order = _rng(seed, _TEST_SLICE_STREAM).permutation(n_test).astype(np.int64)
    return np.sort(np.array_split(order, num_agents)[agent_index])


# Not a test, despite the name: keeps pytest from collecting it where tests import it.
test_slice.__test__ = False  # type: ignore[attr-defined]


def agent_data(
    agent_index: int,
    num_agents: int,
    *,
    partition: Partition,
    alpha: float = 0.5,
    seed: int = 0,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    min_examples: int = DEFAULT_MIN_EXAMPLES,
) -> AgentData:
    """The train shard and test slice of one agent of a federation of ``num_agents``.

    With ``num_agents=1`` the agent holds the whole train set and the whole test set
    (the centralized baseline).

    Raises:
        ValueError: any argument out of range (see the functions above).
    """
    if not 0 <= agent_index < num_agents:
        raise ValueError(f"agent_index must be in [0, {num_agents}), got {agent_index}")
    train, train_bounds, test, test_bounds = _federation_layout(
        num_agents, partition, alpha, seed, test_fraction, min_examples
    )
    return AgentData(
        train=_view(train, train_bounds, agent_index), test=_view(test, test_bounds, agent_index)
    )


#: One computation of a layout at a time: a fleet loads its plugins from many threads at
#: once, and ``functools.cache`` alone would let each of them compute the same layout.
_LAYOUT_LOCK = threading.Lock()


def _federation_layout(
    num_agents: int,
    partition: Partition,
    alpha: float,
    seed: int,
    test_fraction: float,
    min_examples: int,
) -> tuple[Dataset, IndexArray, Dataset, IndexArray]:
    """``_computed_layout``, computed once per process even when many threads ask at once."""
    with _LAYOUT_LOCK:
        return _computed_layout(num_agents, partition, alpha, seed, test_fraction, min_examples)


@cache
def _computed_layout(
    num_agents: int,
    partition: Partition,
    alpha: float,
    seed: int,
    test_fraction: float,
    min_examples: int,
) -> tuple[Dataset, IndexArray, Dataset, IndexArray]:
    """Every agent's train shard and test slice, once per process and federation: the train
    examples arranged shard after shard (agent k's are rows ``bounds[k]:bounds[k + 1]``, in
    the order ``shard_indices`` gives), the test examples slice after slice; read-only, so
    the many agents of one process (``fedbus fleet``) hold views of one array."""
    full = load_digits()
    train_idx, test_idx = stratified_split(full.y, test_fraction=test_fraction, seed=seed)
    train_y = full.y[train_idx]
    shards = shard_indices(
        train_y,
        num_agents,
        partition=partition,
        alpha=alpha,
        seed=seed,
        min_examples=min_examples,
    )
    slices = [test_slice(len(test_idx), k, num_agents, seed=seed) for k in range(num_agents)]
    train, train_bounds = _arranged(full, train_idx, shards)
    test, test_bounds = _arranged(full, test_idx, slices)
    return train, train_bounds, test, test_bounds


def _arranged(
    full: Dataset, part: IndexArray, pieces: list[IndexArray]
) -> tuple[Dataset, IndexArray]:
    """``full``'s rows ``part[piece]`` for each piece in turn, read-only, and the pieces'
    bounds (``len(pieces) + 1`` offsets)."""
    order = part[np.concatenate(pieces)] if pieces else part[:0]
    arranged = full.subset(order)
    arranged.x.flags.writeable = False
    arranged.y.flags.writeable = False
    bounds = np.concatenate([[0], np.cumsum([len(p) for p in pieces])]).astype(np.int64)
    return arranged, bounds


def _view(data: Dataset, bounds: IndexArray, k: int) -> Dataset:
    """Rows ``bounds[k]:bounds[k + 1]`` of ``data``, as views."""
    lo, hi = int(bounds[k]), int(bounds[k + 1])
    return Dataset(x=data.x[lo:hi], y=data.y[lo:hi])
