"""The digits data: loading, the stratified split, agent shards and test slices."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from fedbus_digits import data
from fedbus_digits.data import Partition
from hypothesis import given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.timeout(60)


def _train_labels(seed: int = 0) -> npt.NDArray[np.int64]:
    full = data.load_digits()
    train, _ = data.stratified_split(full.y, seed=seed)
    labels: npt.NDArray[np.int64] = full.y[train]
    return labels


def _assert_partition(shards: list[npt.NDArray[np.int64]], n: int) -> None:
    """Shards are sorted int64, pairwise disjoint, and their union is ``range(n)``."""
    joined = np.concatenate(shards)
    assert joined.dtype == np.int64
    assert len(joined) == n
    assert np.array_equal(np.sort(joined), np.arange(n))
    assert all(np.array_equal(s, np.sort(s)) for s in shards)


def _mean_label_entropy(y: npt.NDArray[np.int64], shards: list[npt.NDArray[np.int64]]) -> float:
    """Mean over agents of the entropy (nats) of the agent's label distribution."""
    entropies = []
    for s in shards:
        p = np.bincount(y[s], minlength=10) / len(s)
        p = p[p > 0]
        entropies.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(entropies))


def test_load_digits_shapes_dtypes_range() -> None:
    """The data has 1,797 rows of 64 float32 pixels in [0, 1] and int64 labels 0-9."""
    full = data.load_digits()
    assert full.x.shape == (1797, 64)
    assert full.x.dtype == np.float32
    assert full.y.dtype == np.int64
    assert float(full.x.min()) == 0.0
    assert float(full.x.max()) == 1.0
    assert set(np.unique(full.y).tolist()) == set(range(10))


def test_load_digits_is_read_only() -> None:
    """The cached arrays cannot be modified by a caller, so every agent sees the same data."""
    full = data.load_digits()
    with pytest.raises(ValueError, match="read-only"):
        full.x[0, 0] = 1.0


def test_stratified_split_keeps_class_shares() -> None:
    """Each class sends round(20%) of its examples to test; train and test partition the data."""
    y = data.load_digits().y
    train, test = data.stratified_split(y, test_fraction=0.2, seed=3)
    _assert_partition([train, test], len(y))
    for c in range(10):
        n_c = int((y == c).sum())
        assert int((y[test] == c).sum()) == int(np.floor(0.2 * n_c + 0.5))


def test_stratified_split_deterministic_per_seed() -> None:
    """The same seed gives the same split; another seed gives another split."""
    y = data.load_digits().y
    a_train, a_test = data.stratified_split(y, seed=1)
    b_train, b_test = data.stratified_split(y, seed=1)
    _, c_test = data.stratified_split(y, seed=2)
    assert np.array_equal(a_train, b_train)
    assert np.array_equal(a_test, b_test)
    assert not np.array_equal(a_test, c_test)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_stratified_split_rejects_bad_fraction(fraction: float) -> None:
    """A test fraction outside (0, 1) is refused."""
    with pytest.raises(ValueError, match="test_fraction"):
        data.stratified_split(data.load_digits().y, test_fraction=fraction)


@pytest.mark.parametrize("partition", list(Partition))
def test_shards_deterministic_disjoint_covering(partition: Partition) -> None:
    """Both partitions are reproducible from their arguments and split the train set exactly."""
    y = _train_labels()
    first = data.shard_indices(y, 10, partition=partition, alpha=0.5, seed=7)
    again = data.shard_indices(y, 10, partition=partition, alpha=0.5, seed=7)
    other = data.shard_indices(y, 10, partition=partition, alpha=0.5, seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    _assert_partition(first, len(y))


def test_iid_shards_near_equal() -> None:
    """IID shard sizes differ by at most one example."""
    for num_agents in (1, 3, 7, 10, 30):
        sizes = [len(s) for s in data.iid_shards(1437, num_agents, seed=0)]
        assert max(sizes) - min(sizes) <= 1
        assert sum(sizes) == 1437


def test_dirichlet_small_alpha_is_skewed() -> None:
    """With alpha = 0.1 agents see far fewer labels than with IID shards (lower entropy)."""
    y = _train_labels()
    iid = _mean_label_entropy(y, data.iid_shards(len(y), 10, seed=0))
    skewed = _mean_label_entropy(y, data.dirichlet_shards(y, 10, alpha=0.1, seed=0))
    default = _mean_label_entropy(y, data.dirichlet_shards(y, 10, alpha=0.5, seed=0))
    assert iid > 2.2  # close to log(10) = 2.30
    assert skewed < 0.6 * iid
    assert skewed < default < iid


def test_dirichlet_large_alpha_is_near_iid() -> None:
    """With alpha = 1000 every agent's label distribution is close to uniform."""
    y = _train_labels()
    shards = data.dirichlet_shards(y, 10, alpha=1000.0, seed=0)
    assert _mean_label_entropy(y, shards) > 2.25


def test_dirichlet_min_examples_honoured() -> None:
    """Every Dirichlet shard holds at least min_examples, even for very skewed draws."""
    y = _train_labels()
    for min_examples in (10, 40):
        shards = data.dirichlet_shards(y, 30, alpha=0.05, seed=0, min_examples=min_examples)
        assert min(len(s) for s in shards) >= min_examples
        _assert_partition(shards, len(y))


def test_dirichlet_rebalance_fallback() -> None:
    """When no draw qualifies, rebalancing still gives every shard exactly its minimum here."""
    y = np.repeat(np.arange(2, dtype=np.int64), 50)
    shards = data.dirichlet_shards(y, 10, alpha=0.01, seed=0, min_examples=10)
    assert [len(s) for s in shards] == [10] * 10
    _assert_partition(shards, len(y))
    again = data.dirichlet_shards(y, 10, alpha=0.01, seed=0, min_examples=10)
    assert all(np.array_equal(a, b) for a, b in zip(shards, again, strict=True))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_agents": 0}, "num_agents"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"min_examples": 200}, "cannot give"),
    ],
)
def test_dirichlet_rejects_bad_arguments(kwargs: dict[str, float], match: str) -> None:
    """Impossible arguments raise ValueError naming the problem."""
    args: dict[str, float] = {"num_agents": 10, "alpha": 0.5, "min_examples": 10} | kwargs
    with pytest.raises(ValueError, match=match):
        data.dirichlet_shards(
            _train_labels(),
            int(args["num_agents"]),
            alpha=args["alpha"],
            min_examples=int(args["min_examples"]),
        )


@settings(max_examples=60, deadline=None, database=None)
@given(
    num_agents=st.integers(min_value=1, max_value=30),
    alpha=st.floats(min_value=0.01, max_value=100.0),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    partition=st.sampled_from(list(Partition)),
)
def test_split_properties(num_agents: int, alpha: float, seed: int, partition: Partition) -> None:
    """For any agents/alpha/seed the split is deterministic, exact, and honours the minimum."""
    y = _train_labels(seed)
    shards = data.shard_indices(y, num_agents, partition=partition, alpha=alpha, seed=seed)
    again = data.shard_indices(y, num_agents, partition=partition, alpha=alpha, seed=seed)
    assert len(shards) == num_agents
    assert all(np.array_equal(a, b) for a, b in zip(shards, again, strict=True))
    assert min(len(s) for s in shards) >= data.DEFAULT_MIN_EXAMPLES
    _assert_partition(shards, len(y))


@pytest.mark.parametrize("num_agents", [1, 2, 7, 10, 30, 400])
def test_test_slices_disjoint_covering(num_agents: int) -> None:
    """The agents' test slices partition the test set, with sizes differing by at most one."""
    n_test = 359
    slices = [data.test_slice(n_test, k, num_agents, seed=4) for k in range(num_agents)]
    _assert_partition(slices, n_test)
    sizes = [len(s) for s in slices]
    assert max(sizes) - min(sizes) <= 1


def test_test_slice_rejects_bad_index() -> None:
    """An agent index outside [0, num_agents) is refused."""
    with pytest.raises(ValueError, match="agent_index"):
        data.test_slice(359, 10, 10, seed=0)


def test_agent_data_centralized_holds_everything() -> None:
    """One IID agent holds the whole train set and the whole test set."""
    one = data.agent_data(0, 1, partition=Partition.IID, seed=0)
    assert len(one.train) + len(one.test) == 1797
    assert len(one.test) == 359
