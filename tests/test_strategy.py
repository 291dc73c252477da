"""FedAvg weighting, weighted means, and cohort sampling."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import RoundError
from agent.roles.aggregator.cohort import cohort_size, sample_cohort
from agent.strategy import ClientResult, FedAvg, weighted_mean

pytestmark = pytest.mark.timeout(30)


def result(value: float, n: int) -> ClientResult:
    return ClientResult(
        f"a{n}", [np.full((2, 2), value, np.float32), np.full(3, value, np.float32)], n, {}
    )


def test_fedavg_weights_by_num_examples() -> None:
    """Two clients with 1 and 3 examples: the mean is 1/4 and 3/4 of their weights."""
    current = [np.zeros((2, 2), np.float32), np.zeros(3, np.float32)]
    out = FedAvg().aggregate(current, [result(0.0, 1), result(4.0, 3)])
    np.testing.assert_allclose(out[0], 3.0)
    np.testing.assert_allclose(out[1], 3.0)
    assert [a.dtype for a in out] == [np.float32, np.float32]


@given(st.lists(st.tuples(st.floats(-100, 100), st.integers(1, 1000)), min_size=1, max_size=8))
def test_fedavg_equals_weighted_mean(pairs: list[tuple[float, int]]) -> None:
    """For any clients, FedAvg equals sum(n_k x_k) / sum(n_k), computed in float64."""
    current = [np.zeros((2, 2), np.float64), np.zeros(3, np.float64)]
    results = [
        ClientResult(str(i), [np.full((2, 2), v), np.full(3, v)], n, {})
        for i, (v, n) in enumerate(pairs)
    ]
    expected = sum(v * n for v, n in pairs) / sum(n for _, n in pairs)
    out = FedAvg().aggregate(current, results)
    np.testing.assert_allclose(out[0], expected, rtol=1e-12, atol=1e-9)


def test_fedavg_with_nothing_to_average_raises() -> None:
    """No survivors is a RoundError, never a division by zero."""
    with pytest.raises(RoundError):
        FedAvg().aggregate([np.zeros(1)], [])


def test_weighted_mean() -> None:
    """weighted_mean weights by num_examples and is NaN for nothing."""
    assert weighted_mean([(1.0, 1), (0.0, 3)]) == 0.25
    assert np.isnan(weighted_mean([]))


@pytest.mark.parametrize(
    ("available", "fraction", "lo", "hi", "expected"),
    [
        (10, 1.0, 2, 100, 10),
        (10, 0.3, 2, 100, 3),
        (10, 0.01, 2, 100, 2),
        (10, 1.0, 2, 4, 4),
        (1, 1.0, 2, 10, 0),
        (3, 0.5, 3, 10, 3),
    ],
)
def test_cohort_size(available: int, fraction: float, lo: int, hi: int, expected: int) -> None:
    """ceil(fraction * available), clamped to [min, max]; 0 when fewer than min are available."""
    assert cohort_size(available, fraction=fraction, min_clients=lo, max_clients=hi) == expected


def test_sample_cohort_is_a_seeded_subset() -> None:
    """The cohort is a sorted subset of the available agents, reproducible from the seed."""
    agents = [f"a{i}" for i in range(20)]
    a = sample_cohort(agents, fraction=0.25, min_clients=2, max_clients=10, rng=random.Random(7))
    b = sample_cohort(agents, fraction=0.25, min_clients=2, max_clients=10, rng=random.Random(7))
    assert a == b == sorted(a)
    assert len(a) == 5
    assert set(a) <= set(agents)
