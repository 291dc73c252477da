"""Capped, jittered exponential reconnect backoff."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.bus.backoff import Backoff
from agent.bus.base import BusSettings
from agent.errors import ConfigError


def test_ceiling_doubles_then_caps() -> None:
    """The un-jittered delay doubles per attempt from ``initial`` and stops at ``maximum``."""
    backoff = Backoff(initial=0.1, maximum=1.0)
    assert [backoff.ceiling(n) for n in range(1, 7)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    )


@given(
    initial=st.floats(min_value=0.001, max_value=10),
    factor=st.floats(min_value=1, max_value=1000),
    attempt=st.integers(min_value=1, max_value=10_000),
    seed=st.integers(),
)
def test_delay_is_jittered_within_half_to_full_ceiling(
    initial: float, factor: float, attempt: int, seed: int
) -> None:
    """Every delay lies in [ceiling/2, ceiling], and never above the cap, for any attempt."""
    backoff = Backoff(initial=initial, maximum=initial * factor)
    delay = backoff.delay(attempt, random.Random(seed))
    ceiling = backoff.ceiling(attempt)
    assert ceiling / 2 <= delay <= ceiling <= backoff.maximum


def test_jitter_spreads_delays() -> None:
    """Jitter makes delays for the same attempt differ (no lock-step reconnects)."""
    backoff = Backoff(initial=1.0, maximum=1.0)
    rng = random.Random(7)
    assert len({backoff.delay(1, rng) for _ in range(20)}) > 1


def test_delays_iterator_follows_attempts() -> None:
    """``delays()`` yields attempt 1, 2, 3… delays; a fresh iterator is a reset."""
    backoff = Backoff(initial=0.5, maximum=4.0)
    first = list(itertools.islice(backoff.delays(random.Random(1)), 5))
    for attempt, delay in enumerate(first, start=1):
        assert backoff.ceiling(attempt) / 2 <= delay <= backoff.ceiling(attempt)
    assert next(backoff.delays(random.Random(1))) == first[0]


def test_from_settings_uses_bus_settings() -> None:
    """The bus backoff comes from ``backoff_initial`` and ``backoff_max``."""
    backoff = Backoff.from_settings(BusSettings("x", backoff_initial=0.2, backoff_max=3.0))
    assert backoff == Backoff(initial=0.2, maximum=3.0)


@pytest.mark.parametrize(("initial", "maximum"), [(0, 1), (-1, 1), (2, 1)])
def test_impossible_bounds_are_config_errors(initial: float, maximum: float) -> None:
    """A non-positive initial delay or a cap below it is a ``ConfigError``."""
    with pytest.raises(ConfigError):
        Backoff(initial=initial, maximum=maximum)


def test_attempts_are_one_based() -> None:
    """Attempt 0 is a programming error, not a zero delay."""
    with pytest.raises(ValueError, match="1-based"):
        Backoff(initial=1, maximum=2).ceiling(0)
