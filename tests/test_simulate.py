"""``[simulate] fit_seconds`` (``fedbus demo --fit-seconds``): a simulated device compute time
per fit that ``slowdown`` scales, the same seam in every mode (``agent.plugin.slowed``)."""

from __future__ import annotations

import pytest

from agent.demo import fleet
from agent.demo.options import DemoOptions
from agent.plugin import slowed
from agent.plugin.loader import CheckedPlugin
from tests.helpers import GossipPlugin


@pytest.mark.parametrize(
    ("took", "slowdown", "fit_seconds", "sleeps"),
    [
        (0.1, 1.0, 0.5, 0.4),  # a quick fit takes the simulated 0.5 s
        (0.1, 5.0, 0.5, 2.4),  # 5x slower: 5 x 0.5 s in all
        (0.7, 1.0, 0.5, 0.0),  # a fit slower than the simulation is not slowed further
        (0.7, 2.0, 0.5, 0.7),  # ... and a slow device doubles its own time
    ],
)
def test_a_fit_takes_slowdown_times_the_simulated_compute_time(
    monkeypatch: pytest.MonkeyPatch, took: float, slowdown: float, fit_seconds: float, sleeps: float
) -> None:
    """A fake clock (no wall time): the fit sleeps slowdown x max(took, fit_seconds) - took."""
    clock = iter([10.0, 10.0 + took])
    slept: list[float] = []

    class FakeTime:
        perf_counter = staticmethod(lambda: next(clock))
        sleep = staticmethod(slept.append)

    monkeypatch.setattr(slowed, "time", FakeTime)
    plugin = slowed.slowed(CheckedPlugin("gossip", GossipPlugin(1.0)), slowdown, fit_seconds)
    plugin.fit(plugin.get_weights(), {})
    assert slept == [pytest.approx(sleeps)]


def test_every_demo_agent_gets_the_simulated_fit_time() -> None:
    """Slow, intermittent and ordinary agents alike (the seam is the same in every mode)."""
    options = DemoOptions(
        agents=6, slow_agents=2, slowdown=5, duty_agents=2, duty_cycle=0.5, fit_seconds=0.4
    )
    sims = [fleet.simulate(options, i) for i in range(6)]
    assert [s.fit_seconds for s in sims] == [0.4] * 6
    assert [s.slowdown for s in sims] == [5, 5, 1, 1, 1, 1]
    assert [s.duty_cycle for s in sims] == [1, 1, 0.5, 0.5, 1, 1]
    assert "0.4 s of simulated compute" in fleet.describe(options)
    plugin = CheckedPlugin("gossip", GossipPlugin(1.0))
    assert slowed.slowed(plugin, 1.0, 0.0) is plugin
