"""``FillWatch``: an async buffer that stops filling ends the run (``RunFailedError``)
instead of waiting for ever, and a buffer that fills slowly does not."""

from __future__ import annotations

import pytest

from agent.roles.aggregator import fill_watch
from agent.roles.aggregator.fill_watch import FillWatch
from agent.roles.aggregator.schedule import RunFailedError

pytestmark = pytest.mark.timeout(10)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(fill_watch.time, "monotonic", fake)
    return fake


def test_fits_that_never_come_back_end_the_run(clock: Clock) -> None:
    """Agents always training (every fit refused or given up and sent again) but no update
    for join_timeout + round_timeout: the run fails and says why."""
    watch = FillWatch(join_timeout=10, round_timeout=5)
    for _ in range(14):
        clock.now += 1
        watch.check(training=3, buffered=0)
    clock.now += 2
    with pytest.raises(RunFailedError, match="no update reached the buffer in 15 s"):
        watch.check(training=3, buffered=0)


def test_a_slowly_filling_buffer_goes_on(clock: Clock) -> None:
    """One update every 14 s (< 15 s) keeps the watch quiet for as long as it lasts."""
    watch = FillWatch(join_timeout=10, round_timeout=5)
    for buffered in range(1, 30):
        clock.now += 14
        watch.check(training=2, buffered=buffered)


def test_no_agent_training_for_join_timeout_is_a_vanished_fleet(clock: Clock) -> None:
    watch = FillWatch(join_timeout=10, round_timeout=5)
    clock.now += 10.5
    with pytest.raises(RunFailedError, match="the fleet vanished"):
        watch.check(training=0, buffered=0)
