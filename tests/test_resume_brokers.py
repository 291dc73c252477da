"""A SIGKILLed aggregator, restarted on the same state dir, finishes its run: over a real
mosquitto and a real nats-server, in the clear and under SecAgg+.

The aggregator is an OS process (``tests.helpers.aggregator_process``); the four trainers run
in the test's event loop and are never restarted: they follow the new incarnation by its
``federation_status``. The toy plugin adds its value to the model (``step``), so the final
model says how many rounds were applied: a half-applied or doubly applied round shows.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
from pathlib import Path

import msgspec
import numpy as np
import pytest

from agent.brokers import EmbeddedBroker
from agent.bus.base import BusSettings
from agent.bus.url import bus_from_url
from agent.config import SecAggConfig, SecureAggregation
from agent.roles.trainer import Trainer
from agent.state import read_weights
from tests.helpers import aggregator_config, aggregator_process, toy, trainer_config

pytestmark = [pytest.mark.broker, pytest.mark.timeout(150)]

ROUNDS = 6
KILL_IN = 3
AGENTS = {"a1": 1.0, "a2": 2.0, "a3": 3.0, "a4": 4.0}
#: every round adds the mean value to every weight
EXPECTED = ROUNDS * sum(AGENTS.values()) / len(AGENTS)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


async def wait_for(path_glob: str, root: Path, seconds: float) -> None:
    async with asyncio.timeout(seconds):
        while not list(root.glob(path_glob)):
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secagg"])
async def test_a_killed_aggregator_resumes_its_run(
    broker: EmbeddedBroker, tmp_path: Path, secure: bool
) -> None:
    """SIGKILL at a random point of round 3 of 6, restart on the same state dir: all 6 rounds
    are done (round 3 re-run with every agent), the trainers were never restarted, the model
    is the one a run without the crash ends with, every file the first process wrote is still
    there (and its rounds byte for byte), and the aborted round is on record."""
    config = aggregator_config(broker.url, tmp_path, agents=len(AGENTS), rounds=ROUNDS)
    schedule = msgspec.structs.replace(
        config.aggregator, eval_every=0, status_every=0.3, join_timeout=20.0
    )
    if secure:
        schedule = msgspec.structs.replace(
            schedule,
            min_fit_clients=3,
            secure_aggregation=SecureAggregation.SECAGG_PLUS,
            secagg=SecAggConfig(stage_timeout=3.0),
        )
    config = msgspec.structs.replace(config, aggregator=schedule)
    config_path = tmp_path / "aggregator.toml"
    config_path.write_bytes(config.to_toml())
    state = config.state_dir
    run_dir = state / "runs" / "run-0001"
    buses = {a: bus_from_url(broker.url, BusSettings(client_id=a)) for a in AGENTS}
    trainers = {
        a: Trainer(
            config=trainer_config(a, broker.url, tmp_path),
            bus=buses[a],
            plugin=toy(v, 1, step=True, delay=0.4),
        )
        for a, v in AGENTS.items()
    }
    first = second = None
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = []
            for a, trainer in trainers.items():
                await buses[a].__aenter__()
                tasks.append(tg.create_task(trainer.run()))
            first = aggregator_process(config_path, tmp_path / "first.log")
            await wait_for(f"open/{KILL_IN:04d}-*.json", run_dir, 60)
            await asyncio.sleep(random.uniform(0.0, 0.3))  # somewhere in round 3 (~0.4 s)
            first.send_signal(signal.SIGKILL)
            await asyncio.to_thread(first.wait, 10)
            before = files(state)
            committed = sorted(p.name for p in (run_dir / "rounds").iterdir() if p.name.isdigit())
            second = aggregator_process(config_path, tmp_path / "second.log")
            await asyncio.to_thread(second.wait, 90)
            out = (tmp_path / "second.log").read_text()
            assert second.returncode == 0, out[-4000:]
            assert all(not t.done() for t in tasks)  # never restarted
            for task in tasks:
                task.cancel()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        for bus in buses.values():
            await bus.__aexit__(None, None, None)
    records = json.loads((run_dir / "metrics.json").read_text())
    assert [r["round"] for r in records] == list(range(1, ROUNDS + 1))
    assert all(sorted(r["survivors"]) == sorted(AGENTS) for r in records), records
    assert all(r["dropouts"] == [] for r in records)
    weights = read_weights(run_dir / "global_model.npz")
    tolerance = 0.05 if secure else 0.0  # SecAgg+ quantizes stochastically
    np.testing.assert_allclose(weights[0], EXPECTED, atol=tolerance)
    after = files(state)
    assert set(before) <= set(after)
    kept = [f for f in before if f.startswith("runs/run-0001/rounds/")]
    assert kept
    assert all(before[f] == after[f] for f in kept)
    assert len(list((run_dir / "incarnations").glob("*.json"))) == 2
    assert json.loads((run_dir / "result.json").read_text())["outcome"] == "completed"
    # the round the kill interrupted (3, or 4 if 3 had just committed) ran again
    interrupted = int(committed[-1]) + 1
    assert interrupted in (KILL_IN, KILL_IN + 1), committed
    assert '"round_aborted"' in out
    assert '"run_resumed"' in out
