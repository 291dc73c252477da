"""Agent lifecycle around the rounds: rejoining after a reconnect, joining late, rejection."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.brokers import EmbeddedBroker
from agent.bus.base import BusSettings
from agent.bus.memory import MemoryBroker, MemoryBus
from agent.bus.url import bus_from_url
from agent.plugin.loader import CheckedPlugin
from agent.roles.aggregator import Aggregator
from agent.roles.aggregator.records import RoundRecord
from agent.roles.trainer import Trainer
from tests.helpers import ToyPlugin, aggregator_config, toy, trainer_config

pytestmark = pytest.mark.timeout(60)


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` until it holds (bounded: 10 s)."""
    async with asyncio.timeout(10):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_trainer_rejoins_after_its_connection_drops(tmp_path: Path) -> None:
    """When the broker drops a trainer's connection, the bus reconnects and the trainer sends
    `join` again and is admitted again, without a restart."""
    broker = MemoryBroker()
    config = aggregator_config("mem://", tmp_path, agents=1, rounds=1)
    async with (
        MemoryBus(broker, BusSettings(client_id="a1", backoff_initial=0.01)) as b1,
        MemoryBus(broker, BusSettings(client_id="aggregator")) as b2,
        asyncio.TaskGroup() as tg,
    ):
        trainer = Trainer(config=trainer_config("a1", "mem://", tmp_path), bus=b1, plugin=toy(1, 1))
        aggregator = Aggregator(
            config=config, bus=b2, plugin_name="toy", initial_weights=toy(0, 1).get_weights()
        )
        await b2.subscribe("fl/fed/join")
        receiver = tg.create_task(aggregator.dispatcher.run(b2))
        task = tg.create_task(trainer.run())
        await wait_until(lambda: trainer.admitted)
        with capture_logs() as logs:
            broker.drop("a1")
            await wait_until(
                lambda: any(e["event"] == "agent_admitted" and e["rejoin"] for e in logs)
            )
        events = [e["event"] for e in logs]
        assert "rejoining_after_reconnect" in events
        assert "join_sent" in events
        assert "join_accepted" in events
        task.cancel()
        receiver.cancel()


async def test_a_trainer_joins_once_its_bus_is_up_not_while_it_is_down(tmp_path: Path) -> None:
    """A trainer that starts while its broker is down sends no join until its bus connects
    (each join sent meanwhile only waited out publish_timeout, and the join backoff grew: a
    fleet member queued for its connect joined up to 30 s after it), then joins at once."""
    broker = MemoryBroker()
    broker.stop()
    fast = {"backoff_initial": 0.05, "backoff_max": 0.1, "publish_timeout": 0.1}
    config = aggregator_config("mem://", tmp_path, agents=1, rounds=1)
    with capture_logs() as logs:
        async with (
            MemoryBus(broker, BusSettings(client_id="a1", **fast)) as b1,  # type: ignore[arg-type]
            MemoryBus(broker, BusSettings(client_id="aggregator", **fast)) as b2,  # type: ignore[arg-type]
            asyncio.TaskGroup() as tg,
        ):
            trainer = Trainer(
                config=trainer_config("a1", "mem://", tmp_path), bus=b1, plugin=toy(1, 1)
            )
            aggregator = Aggregator(
                config=config, bus=b2, plugin_name="toy", initial_weights=toy(0, 1).get_weights()
            )
            task = tg.create_task(trainer.run())
            await asyncio.sleep(0.6)  # several publish timeouts and join retries while down
            assert not [e for e in logs if e["event"] == "join_sent"]
            broker.start()
            await b2.subscribe("fl/fed/join")
            receiver = tg.create_task(aggregator.dispatcher.run(b2))
            await wait_until(lambda: trainer.admitted)
            task.cancel()
            receiver.cancel()
    unsent_joins = [
        e for e in logs if e["event"] == "message_not_sent" and e.get("kind") == "JoinRequest"
    ]
    assert unsent_joins == []
    assert [e["event"] for e in logs].count("join_sent") >= 1


@pytest.mark.broker
async def test_a_late_joiner_gets_the_model_in_its_inbox_and_trains(
    nats_server: EmbeddedBroker, tmp_path: Path
) -> None:
    """On NATS (no retained messages) an agent that joins after round 1 receives the current
    global model in its inbox and is part of the later rounds' cohorts."""
    config = aggregator_config(nats_server.url, tmp_path, agents=1, rounds=4)
    started: list[asyncio.Task[None]] = []

    async def late(bus: object) -> None:
        trainer = Trainer(
            config=trainer_config("late", nats_server.url, tmp_path), bus=bus, plugin=toy(5.0, 1)
        )  # type: ignore[arg-type]
        await trainer.run()

    class StartLateAfterRound1:
        def round_started(self, round: int, cohort: Sequence[str]) -> None:
            pass

        def round_finished(self, record: RoundRecord) -> None:
            if record.round == 1:
                started.append(asyncio.get_running_loop().create_task(late(b3)))

    async with (
        bus_from_url(nats_server.url, BusSettings(client_id="early")) as b1,
        bus_from_url(nats_server.url, BusSettings(client_id="aggregator")) as b2,
        bus_from_url(nats_server.url, BusSettings(client_id="late")) as b3,
        asyncio.TaskGroup() as tg,
    ):
        early = tg.create_task(
            Trainer(
                config=trainer_config("early", nats_server.url, tmp_path),
                bus=b1,
                plugin=toy(1.0, 1),
            ).run()
        )
        summary = await Aggregator(
            config=config,
            bus=b2,
            plugin_name="toy",
            initial_weights=toy(0, 1).get_weights(),
            observer=StartLateAfterRound1(),
        ).run()
        for task in [early, *started]:
            task.cancel()
    assert summary.rounds[0].survivors == ["early"]
    assert summary.rounds[-1].survivors == ["early", "late"]
    assert summary.rounds[-1].loss == pytest.approx(3.0)  # (1 + 5) / 2


async def test_an_agent_with_another_plugin_is_rejected(tmp_path: Path) -> None:
    """An agent whose plugin differs from the federation's is told why and is never admitted."""
    broker = MemoryBroker()
    config = aggregator_config("mem://", tmp_path, agents=1, rounds=1)
    async with (
        MemoryBus(broker, BusSettings(client_id="a1")) as b1,
        MemoryBus(broker, BusSettings(client_id="aggregator")) as b2,
        asyncio.TaskGroup() as tg,
    ):
        other = CheckedPlugin("other-plugin", ToyPlugin(1.0, 1))
        trainer = Trainer(config=trainer_config("a1", "mem://", tmp_path), bus=b1, plugin=other)
        aggregator = Aggregator(
            config=config, bus=b2, plugin_name="toy", initial_weights=toy(0, 1).get_weights()
        )
        await b2.subscribe("fl/fed/join")
        receiver = tg.create_task(aggregator.dispatcher.run(b2))
        with capture_logs() as logs:
            task = tg.create_task(trainer.run())
            await wait_until(lambda: trainer.status == "rejected")
        rejected = [e for e in logs if e["event"] == "join_rejected"]
        assert "plugin 'toy', not 'other-plugin'" in rejected[0]["reason"]
        assert not trainer.admitted
        assert aggregator.agents == {}
        task.cancel()
        receiver.cancel()


async def test_the_federation_survives_a_broker_outage(tmp_path: Path) -> None:
    """The broker goes away for all of round 2: nothing can be sent, so round 2 has no
    survivors and keeps the model; the buses reconnect, the agents rejoin, and the last round
    has every agent again. Nothing crashes."""
    broker = MemoryBroker()
    fast = {"backoff_initial": 0.05, "backoff_max": 0.2, "publish_timeout": 0.3}

    class OutageInRound2:
        def round_started(self, round: int, cohort: Sequence[str]) -> None:
            if round == 2:
                broker.stop()

        def round_finished(self, record: RoundRecord) -> None:
            if record.round == 2:
                broker.start()

    config = aggregator_config("mem://", tmp_path, agents=2, rounds=4, round_timeout=1.0)
    async with (
        MemoryBus(broker, BusSettings(client_id="a1", **fast)) as b1,  # type: ignore[arg-type]
        MemoryBus(broker, BusSettings(client_id="a2", **fast)) as b2,  # type: ignore[arg-type]
        MemoryBus(broker, BusSettings(client_id="aggregator", **fast)) as b3,  # type: ignore[arg-type]
        asyncio.TaskGroup() as tg,
    ):
        trainers = [
            tg.create_task(
                Trainer(config=trainer_config(a, "mem://", tmp_path), bus=b, plugin=toy(v, 1)).run()
            )
            for a, b, v in (("a1", b1, 1.0), ("a2", b2, 3.0))
        ]
        summary = await Aggregator(
            config=config,
            bus=b3,
            plugin_name="toy",
            initial_weights=toy(0, 1).get_weights(),
            observer=OutageInRound2(),
        ).run()
        for task in trainers:
            task.cancel()
    assert summary.rounds[0].survivors == ["a1", "a2"]
    assert summary.rounds[1].survivors == []
    assert summary.rounds[1].model_version == summary.rounds[0].model_version  # kept
    assert summary.rounds[-1].survivors == ["a1", "a2"]
    assert summary.rounds[-1].model_version == 4


def test_the_runtime_never_imports_the_roles() -> None:
    """The composition root (``agent.node``) sits above the roles; importing every runtime
    module loads no role (no runtime ↔ roles cycle)."""
    import subprocess
    import sys

    code = (
        "import sys, pkgutil, importlib, agent.runtime\n"
        "for m in pkgutil.iter_modules(agent.runtime.__path__):\n"
        "    importlib.import_module('agent.runtime.' + m.name)\n"
        "print(sorted(n for n in sys.modules if n.startswith('agent.roles')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split() == ["[]"]
