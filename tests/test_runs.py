"""Successive runs of one long-lived aggregator process on the in-memory bus
(``after_run = "next"``): each run gets the next id and its own directory, a run continues
from the previous one's model (``continue_from = "last"``), and the trainers follow."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgspec
import numpy as np
import pytest

from agent.bus.base import BusSettings
from agent.bus.memory import MemoryBroker, MemoryBus
from agent.config import AfterRun
from agent.roles.aggregator import Aggregator
from agent.roles.aggregator.records import RunSummary
from agent.roles.aggregator.runs import list_runs
from agent.roles.aggregator.service import serve
from agent.roles.trainer import Trainer
from agent.state import read_weights
from tests.helpers import aggregator_config, toy, trainer_config

pytestmark = pytest.mark.timeout(60)


async def test_successive_runs_continue_from_the_last_model(tmp_path: Path) -> None:
    broker = MemoryBroker()
    config = aggregator_config("mem://", tmp_path, agents=2, rounds=2)
    schedule = msgspec.structs.replace(
        config.aggregator, eval_every=0, after_run=AfterRun.NEXT, continue_from="last"
    )
    config = msgspec.structs.replace(config, aggregator=schedule)
    runs = config.state_dir / "runs"

    async def play(_: Aggregator, work: object) -> RunSummary | None:
        return await work  # type: ignore[misc]

    async def finished(_: Aggregator) -> None:
        return None

    async with asyncio.TaskGroup() as tg, MemoryBus(broker, BusSettings(client_id="agg")) as bus:
        tasks = []
        for a, v in (("a1", 1.0), ("a2", 3.0)):
            tbus = MemoryBus(broker, BusSettings(client_id=a))
            await tbus.__aenter__()
            trainer = Trainer(
                config=trainer_config(a, "mem://", tmp_path), bus=tbus, plugin=toy(v, 1, step=True)
            )
            tasks.append(tg.create_task(trainer.run()))

        def build() -> Aggregator:
            weights = toy(0, 1).get_weights()
            return Aggregator(config=config, bus=bus, plugin_name="toy", initial_weights=weights)

        service = tg.create_task(
            serve(build, after_run=AfterRun.NEXT, play=play, finished=finished)
        )
        async with asyncio.timeout(40):
            while not (runs / "run-0003" / "result.json").is_file():
                await asyncio.sleep(0.05)
        for task in [service, *tasks]:
            task.cancel()
    done = [r for r in list_runs(config.state_dir) if r.outcome is not None]
    assert [r.run_id for r in done[:3]] == ["run-0001", "run-0002", "run-0003"]
    assert [r.continued_from for r in done[:3]] == ["", "run-0001", "run-0002"]
    # each run adds 2 rounds of the mean value 2 to where the previous one ended
    for i, run in enumerate(done[:3], start=1):
        np.testing.assert_allclose(read_weights(run.path / "global_model.npz")[0], 4.0 * i)
        records = json.loads((run.path / "metrics.json").read_text())
        assert [sorted(r["survivors"]) for r in records] == [["a1", "a2"]] * 2
