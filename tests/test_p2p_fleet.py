"""The demo's modes and heterogeneous fleet (``agent.demo.fleet``, ``[simulate]``): who is
slow or intermittent, that a slow fit sleeps its share and a duty cycle disconnects, the
async mode refused until it exists, and ``fedbus demo --mode p2p`` over a real broker."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from agent.brokers import EmbeddedBroker
from agent.config import SimulateConfig, TrainingMode
from agent.demo import fleet
from agent.demo.configs import trainer_config
from agent.demo.options import DemoOptions
from agent.errors import ConfigError
from agent.plugin import slowed
from agent.plugin.loader import CheckedPlugin
from agent.runtime.duty import duty_cycled
from tests.helpers import GossipPlugin, fedbus


def test_the_fleet_flags_pick_the_agents_they_name(tmp_path: Path) -> None:
    """The first K agents are slow, the next M intermittent with spread phases; without the
    flags every config is what the demo always wrote."""
    options = DemoOptions(
        agents=6, slow_agents=2, slowdown=5, duty_agents=2, duty_cycle=0.5, mode="p2p"
    )
    configs = [
        fleet.shape_agent(options, i, trainer_config(options, i, "nats://x", tmp_path))
        for i in range(6)
    ]
    assert [c.simulate.slowdown for c in configs] == [5, 5, 1, 1, 1, 1]
    assert [c.simulate.duty_cycle for c in configs] == [1, 1, 0.5, 0.5, 1, 1]
    assert configs[2].simulate.phase != configs[3].simulate.phase
    assert all(c.aggregator.mode is TrainingMode.P2P for c in configs)
    assert configs[0].p2p.peers == [f"agent-{i:02d}" for i in range(6)]
    plain = DemoOptions(agents=3)
    base = trainer_config(plain, 1, "nats://x", tmp_path)
    assert fleet.shape_agent(plain, 1, base) is base
    assert fleet.describe(plain) == ""


def test_a_slowed_fit_sleeps_its_share(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fit of 0.1 s with slowdown 5 sleeps 0.4 s more (a fake clock: no wall time)."""
    clock = iter([10.0, 10.1])
    slept: list[float] = []

    class FakeTime:
        perf_counter = staticmethod(lambda: next(clock))
        sleep = staticmethod(slept.append)

    monkeypatch.setattr(slowed, "time", FakeTime)
    plugin = slowed.slowed(CheckedPlugin("gossip", GossipPlugin(1.0)), 5.0)
    plugin.fit(plugin.get_weights(), {})
    assert slept == [pytest.approx(0.4)]
    assert slowed.slowed(plugin, 1.0) is plugin


def test_a_duty_cycle_cancels_and_restarts_the_node() -> None:
    """Online half of every 0.2 s: the node is cancelled at each window's end and started
    again after the offline half."""
    starts: list[int] = []
    cancelled: list[int] = []

    async def node() -> None:
        starts.append(1)
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(1)
            raise

    async def main() -> None:
        settings = SimulateConfig(duty_cycle=0.5, period=0.2)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.0):
                await duty_cycled(node, settings)

    asyncio.run(main())
    assert len(starts) >= 2
    assert len(cancelled) >= 2


def test_demo_modes_and_a_fleet_that_does_not_fit() -> None:
    """``run_demo`` checks the mode first (the CLI prints the ConfigError, exit status 2)."""
    assert fleet.check_mode(DemoOptions(mode="async")) is TrainingMode.ASYNC
    with pytest.raises(ConfigError, match="> --agents 4"):
        fleet.check_mode(DemoOptions(agents=4, slow_agents=3, duty_agents=2))


@pytest.mark.broker
@pytest.mark.timeout(120)
def test_demo_p2p_with_a_slow_and_an_intermittent_agent(
    nats_server: EmbeddedBroker, tmp_path: Path
) -> None:
    """``fedbus demo --mode p2p`` runs no aggregator: four peers gossip to the end; the slow
    agent's fits sleep and the intermittent one goes offline and comes back."""
    report = tmp_path / "report"
    run = fedbus(
        "demo",
        "--bus-url",
        nats_server.url,
        "--insecure",
        "--mode",
        "p2p",
        "--agents",
        "4",
        "--rounds",
        "12",
        "--slow-agents",
        "1",
        "--duty-agents",
        "1",
        "--duty-cycle",
        "0.5",
        "--duty-period",
        "2",
        "--report-dir",
        str(report),
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "fleet: mode p2p, 1 agents 5x slower, 1 agents online 50% of every 2 s" in run.stdout
    timeline: dict[str, Any] = json.loads((report / "p2p.json").read_text())
    last = timeline["timeline"][-1]
    assert last["min_version"] == 12 or last["done"] == 4
    assert timeline["final_accuracy"] > 0.7
    # the intermittent agent (the second: the first is the slow one) went offline while it
    # was still training, as every status the watcher heard tells (its once-a-second
    # samples can miss a spell on a loaded machine)
    assert timeline["offline_spells"].get("agent-01", 0) >= 1, timeline["offline_spells"]
    assert not (report / "aggregator").exists()  # no aggregator ran
