"""Liveness on the bus: agents' retained online/offline status and last will, the aggregator
leaving dead agents out, and `fedbus status`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest

from agent.brokers import EmbeddedBroker
from agent.bus.base import BusSettings
from agent.bus.memory import MemoryBroker, MemoryBus
from agent.bus.url import bus_from_url
from agent.messages import decode
from agent.messages.bodies import AgentStatus, FederationStatus, Liveness, RoundPhase
from agent.roles.aggregator import Aggregator
from agent.roles.aggregator.records import RoundRecord
from agent.roles.liveness import LivenessTracker, status_will
from agent.roles.trainer import Trainer
from tests.helpers import aggregator_config, toy, trainer_config

pytestmark = pytest.mark.timeout(30)


def test_an_agent_is_gone_when_it_says_so_or_its_heartbeats_stop() -> None:
    """online → alive; offline → not; online but silent for longer than the timeout → not;
    never heard of → judged by its answers (alive)."""
    now = [1000.0]
    live = LivenessTracker(timeout=10, clock=lambda: now[0])
    assert live.alive("x")
    assert live.state("x") is None  # unknown
    assert live.update("a", AgentStatus(state=Liveness.ONLINE))
    assert live.alive("a")
    now[0] += 11
    assert not live.alive("a")
    assert live.state("a") == "offline"
    assert not live.update("a", AgentStatus(state=Liveness.ONLINE))  # same state: no change
    assert live.alive("a")
    assert live.update("a", AgentStatus(state=Liveness.OFFLINE))
    assert not live.alive("a")


async def test_a_dead_agent_is_seen_offline_and_left_out(tmp_path: Path) -> None:
    """Three agents; one loses its connection in round 1 while training and stays away (its
    reconnect backoff outlasts the test; coming back would rightly make it online again). Its
    last will
    (offline, retained) reaches the aggregator, which stops waiting for it — round 1 ends
    long before its 60 s deadline — and leaves it out of round 2's cohort; the retained
    federation_status shows it offline."""
    broker = MemoryBroker()
    never = threading.Event()
    plugins = {"a1": toy(1.0, 1), "a2": toy(3.0, 1), "a3": toy(9.0, 1, block=never)}

    class DropA3:
        def round_started(self, round: int, cohort: Sequence[str]) -> None:
            if round == 1:
                asyncio.get_running_loop().call_later(0.3, broker.drop, "a3")

        def round_finished(self, record: RoundRecord) -> None:
            pass

    config = aggregator_config("mem://", tmp_path, agents=3, rounds=2, round_timeout=60.0)
    buses, tasks = [], []
    try:
        async with asyncio.TaskGroup() as tg:
            for agent_id, plugin in plugins.items():
                cfg = trainer_config(agent_id, "mem://", tmp_path)
                away = {"backoff_initial": 60.0, "backoff_max": 60.0} if agent_id == "a3" else {}
                settings = BusSettings(client_id=agent_id, will=status_will(cfg), **away)
                bus = MemoryBus(broker, settings)
                await bus.__aenter__()
                buses.append(bus)
                tasks.append(tg.create_task(Trainer(config=cfg, bus=bus, plugin=plugin).run()))
            async with MemoryBus(broker, BusSettings(client_id="aggregator")) as bus:
                aggregator = Aggregator(
                    config=config,
                    bus=bus,
                    plugin_name="toy",
                    initial_weights=toy(0, 1).get_weights(),
                    observer=DropA3(),
                )
                summary = await aggregator.run()
                await asyncio.sleep(0.1)  # the last federation_status goes out
            for task in tasks:
                task.cancel()
    finally:
        never.set()
        for bus in buses:
            await bus.__aexit__(None, None, None)
    first, second = summary.rounds
    assert first.dropouts == ["a3"]
    assert first.survivors == ["a1", "a2"]
    assert second.cohort == ["a1", "a2"]
    retained = broker.retained("fl/fed/federation_status")
    assert retained is not None
    status = decode(retained).body
    assert isinstance(status, FederationStatus)
    assert status.agents["a3"].state == "offline"
    assert status.agents["a1"].state == "online"
    assert status.last_round is not None
    assert status.last_round.round == 2


@pytest.mark.timeout(60)
@pytest.mark.broker
async def test_fedbus_status_shows_the_federation(
    nats_server: EmbeddedBroker, tmp_path: Path
) -> None:
    """While the aggregator waits for a third agent, `fedbus status` (over a real
    nats-server, which keeps nothing: the aggregator re-sends its summary) shows the two
    online agents with what they do, and the aggregator's stage."""
    config = aggregator_config(nats_server.url, tmp_path, agents=3, rounds=1)
    schedule = msgspec.structs.replace(config.aggregator, join_timeout=20.0, status_every=0.5)
    config = msgspec.structs.replace(config, aggregator=schedule)
    status_config = tmp_path / "observer.toml"
    status_config.write_bytes(config.to_toml())
    async with asyncio.TaskGroup() as tg:
        buses, tasks = [], []
        for agent_id in ("a1", "a2"):
            cfg = trainer_config(agent_id, nats_server.url, tmp_path)
            bus = bus_from_url(nats_server.url, BusSettings(client_id=agent_id))
            await bus.__aenter__()
            buses.append(bus)
            tasks.append(tg.create_task(Trainer(config=cfg, bus=bus, plugin=toy(1.0, 1)).run()))
        agg_bus = bus_from_url(nats_server.url, BusSettings(client_id="aggregator"))
        await agg_bus.__aenter__()
        aggregator = Aggregator(
            config=config, bus=agg_bus, plugin_name="toy", initial_weights=toy(0, 1).get_weights()
        )
        run = tg.create_task(aggregator.run())
        async with asyncio.timeout(20):  # the agents join and say they are online
            while len(aggregator.agents) < 2 or len(aggregator.liveness.agents) < 2:
                await asyncio.sleep(0.1)
        shown = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "agent", "status", "--as", str(status_config), "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        run.cancel()
        for task in tasks:
            task.cancel()
    for bus in [*buses, agg_bus]:
        await bus.__aexit__(None, None, None)
    assert shown.returncode == 0, shown.stderr
    summary = json.loads(shown.stdout)
    assert summary["phase"] == RoundPhase.WAITING_FOR_AGENTS
    assert summary["detail"] == "waiting for 3 agents"
    assert {a: s["state"] for a, s in summary["agents"].items()} == {"a1": "online", "a2": "online"}
    assert all(s["admitted"] for s in summary["agents"].values())
