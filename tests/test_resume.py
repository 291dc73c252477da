"""Resume and honest control flow on the in-memory bus: continuous training (``rounds = 0``)
stopped and resumed, a fleet that vanishes fails the run (after a bounded wait, no hot loop
of skipped rounds), and what a restart makes of an interrupted round's files."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgspec
import numpy as np
import pytest
from structlog.testing import capture_logs

from agent.bus.base import BusSettings
from agent.bus.memory import MemoryBroker, MemoryBus
from agent.config import AgentConfig
from agent.roles.aggregator import Aggregator
from agent.roles.aggregator.records import GlobalState
from agent.roles.aggregator.resume import load
from agent.roles.aggregator.runs import list_runs
from agent.roles.aggregator.schedule import RunFailedError
from agent.roles.trainer import Trainer
from agent.state import read_weights
from tests.helpers import aggregator_config, toy, trainer_config

pytestmark = pytest.mark.timeout(60)


def continuous(tmp_path: Path, **kw: object) -> AgentConfig:
    config = aggregator_config("mem://", tmp_path, agents=2, rounds=0)
    schedule = msgspec.structs.replace(config.aggregator, eval_every=0, **kw)
    return msgspec.structs.replace(config, aggregator=schedule)


async def until_round(aggregator: Aggregator, r: int) -> None:
    while not aggregator.store.committed(r):
        await asyncio.sleep(0.01)


async def test_continuous_training_stops_and_resumes(tmp_path: Path) -> None:
    """``rounds = 0`` trains until cancelled; a new aggregator on the state dir resumes the
    same run after its last committed round, with the same model (each round adds the mean
    value 2, so the model counts the rounds applied), and the trainers follow it."""
    broker = MemoryBroker()
    config = continuous(tmp_path)
    weights = toy(0, 1).get_weights()
    async with asyncio.TaskGroup() as tg:
        trainers = []
        for a, v in (("a1", 1.0), ("a2", 3.0)):
            bus = MemoryBus(broker, BusSettings(client_id=a))
            await bus.__aenter__()
            trainer = Trainer(
                config=trainer_config(a, "mem://", tmp_path), bus=bus, plugin=toy(v, 1, step=True)
            )
            trainers.append(tg.create_task(trainer.run()))
        for stop_after in (3, 5):
            async with MemoryBus(broker, BusSettings(client_id="aggregator")) as bus:
                aggregator = Aggregator(
                    config=config, bus=bus, plugin_name="toy", initial_weights=weights
                )
                running = tg.create_task(aggregator.run())
                await asyncio.wait_for(until_round(aggregator, stop_after), 30)
                running.cancel()
                await asyncio.wait([running])
        for task in trainers:
            task.cancel()
    run = config.state_dir / "runs" / "run-0001"
    resumed = load(run)
    assert resumed is not None
    last = resumed.checkpoint.round
    assert last >= 5
    assert [r.round for r in resumed.records] == list(range(1, last + 1))
    for r in range(last + 1):
        model = read_weights(run / "rounds" / f"{r:04d}" / "model.npz")
        np.testing.assert_allclose(model[0], 2.0 * r)
    assert len(list((run / "incarnations").glob("*.json"))) == 2
    assert [r.run_id for r in list_runs(config.state_dir)] == ["run-0001"]  # one run, resumed


async def test_a_vanished_fleet_fails_the_run_after_a_bounded_wait(tmp_path: Path) -> None:
    """Both agents stop after round 1: round 2 waits (logged) for ``join_timeout`` instead of
    skipping rounds, then the run fails, saying why, with a ``result.json`` that says so."""
    broker = MemoryBroker()
    config = continuous(tmp_path, join_timeout=1.0, min_fit_clients=2)
    weights = toy(0, 1).get_weights()
    with capture_logs() as logs:
        async with asyncio.TaskGroup() as tg:
            trainers = []
            for a in ("a1", "a2"):
                bus = MemoryBus(broker, BusSettings(client_id=a))
                await bus.__aenter__()
                trainer = Trainer(
                    config=trainer_config(a, "mem://", tmp_path), bus=bus, plugin=toy(1.0, 1)
                )
                trainers.append(tg.create_task(trainer.run()))
            async with MemoryBus(broker, BusSettings(client_id="aggregator")) as bus:
                aggregator = Aggregator(
                    config=config, bus=bus, plugin_name="toy", initial_weights=weights
                )

                async def stop_trainers() -> None:
                    await until_round(aggregator, 1)
                    for task in trainers:  # a clean stop says offline
                        task.cancel()

                tg.create_task(stop_trainers())
                with pytest.raises(RunFailedError, match="the fleet vanished"):
                    await aggregator.run()
    # No hot loop of skipped rounds: round 2 may already have sampled the two agents when
    # they stop (a loaded machine), and that one round is skipped; every later one waits.
    assert sum(e["event"] == "round_skipped" for e in logs) <= 1
    assert any(e["event"] == "round_waiting" for e in logs)
    result = json.loads((config.state_dir / "runs" / "run-0001" / "result.json").read_text())
    assert result["outcome"] == "failed"
    assert "fleet vanished" in result["reason"]


@pytest.mark.timeout(25)
async def test_a_resumed_run_does_not_wait_for_an_agent_known_offline(tmp_path: Path) -> None:
    """Three agents; the aggregator stops after round 2 and one agent stops cleanly (it says
    offline): the resumed run goes on with the two others at once, not after join_timeout
    (30 s, longer than this test may take)."""
    broker = MemoryBroker()
    config = aggregator_config("mem://", tmp_path, agents=3, rounds=4)
    schedule = msgspec.structs.replace(config.aggregator, eval_every=0, join_timeout=30.0)
    config = msgspec.structs.replace(config, aggregator=schedule)
    weights = toy(0, 1).get_weights()
    async with asyncio.TaskGroup() as tg:
        trainers = {}
        for a in ("a1", "a2", "a3"):
            bus = MemoryBus(broker, BusSettings(client_id=a))
            await bus.__aenter__()
            trainer = Trainer(
                config=trainer_config(a, "mem://", tmp_path), bus=bus, plugin=toy(1.0, 1)
            )
            trainers[a] = tg.create_task(trainer.run())
        async with MemoryBus(broker, BusSettings(client_id="aggregator")) as bus:
            first = Aggregator(config=config, bus=bus, plugin_name="toy", initial_weights=weights)
            running = tg.create_task(first.run())
            await asyncio.wait_for(until_round(first, 2), 20)
            running.cancel()
            await asyncio.wait([running])
        trainers["a3"].cancel()
        await asyncio.wait([trainers["a3"]])
        async with MemoryBus(broker, BusSettings(client_id="aggregator")) as bus:
            second = Aggregator(config=config, bus=bus, plugin_name="toy", initial_weights=weights)
            summary = await second.run()
        for task in trainers.values():
            task.cancel()
    assert [r.round for r in summary.rounds] == [1, 2, 3, 4]
    assert [sorted(r.survivors) for r in summary.rounds[2:]] == [["a1", "a2"]] * 2


def test_an_interrupted_round_is_aborted_and_its_files_stay(tmp_path: Path) -> None:
    """A round that was opened (and half written: a partial directory) but never committed
    is reported aborted; resuming goes on after the last committed round."""
    from agent.roles.aggregator.persistence import Checkpoint, RunStore

    run = tmp_path / "runs" / "run-0001"
    store = RunStore(run, incarnation="first")
    state = GlobalState.of(0, toy(0, 1).get_weights())
    ckpt = Checkpoint("run-0001", 0, 0, state.sha256, [3, [0] * 625, None])
    asyncio.run(store.commit(ckpt, state))
    store.open_round(1, stage="share_keys")
    (run / "rounds" / ".0001.first.partial").mkdir()
    with capture_logs() as logs:
        resumed = load(run)
    assert resumed is not None
    assert resumed.checkpoint.round == 0
    assert [a["stage"] for a in resumed.aborted] == ["share_keys"]
    assert any(e["event"] == "round_aborted" and e["round"] == 1 for e in logs)
    assert (run / "rounds" / ".0001.first.partial").is_dir()  # nothing deleted


async def test_a_resumed_run_goes_on_spending_the_same_privacy_budget(tmp_path: Path) -> None:
    """Central DP with a budget for two of four rounds, the aggregator stopped after round
    1: the resumed run charges round 1 again from its record, so it stops before round 3
    (a budget started at zero would allow rounds 2 and 3)."""
    from agent.privacy import accountant
    from agent.privacy.config import PrivacyConfig, PrivacyMode

    two = accountant.Accountant(1e-5)
    two.charge(2.0, 1.0)
    budget = two.projected(2.0, 1.0) * 1.01
    privacy = PrivacyConfig(
        mode=PrivacyMode.CENTRAL, noise_multiplier=2.0, target_epsilon=budget, clip_norm=0.5
    )
    config = aggregator_config("mem://", tmp_path, agents=2, rounds=4)
    schedule = msgspec.structs.replace(config.aggregator, eval_every=0, privacy=privacy)
    config = msgspec.structs.replace(config, aggregator=schedule)
    broker = MemoryBroker()
    weights = toy(0, 1).get_weights()
    async with asyncio.TaskGroup() as tg:
        trainers = []
        for a, v in (("a1", 1.0), ("a2", 3.0)):
            bus = MemoryBus(broker, BusSettings(client_id=a))
            await bus.__aenter__()
            trainer = Trainer(
                config=trainer_config(a, "mem://", tmp_path), bus=bus, plugin=toy(v, 1)
            )
            trainers.append(tg.create_task(trainer.run()))
        async with MemoryBus(broker, BusSettings(client_id="aggregator")) as bus:
            first = Aggregator(config=config, bus=bus, plugin_name="toy", initial_weights=weights)
            running = tg.create_task(first.run())
            await asyncio.wait_for(until_round(first, 1), 20)
            running.cancel()
            await asyncio.wait([running])
        async with MemoryBus(broker, BusSettings(client_id="aggregator")) as bus:
            second = Aggregator(config=config, bus=bus, plugin_name="toy", initial_weights=weights)
            summary = await second.run()
        for task in trainers:
            task.cancel()
    assert summary.stopped == "privacy_budget"
    assert [r.round for r in summary.rounds] == [1, 2]
    epsilons = [r.epsilon for r in summary.rounds]
    assert epsilons[0] is not None
    assert epsilons[1] is not None
    assert epsilons[0] < epsilons[1] <= budget
