"""Synchronous rounds against buffered asynchronous aggregation (FedBuff), in the clear and
under SecAgg+, on a heterogeneous fleet: accuracy against wall time, one JSON report.

    .venv/bin/python bench/async_digits.py [--agents 10] [--slow 3] [--slowdown 5]
        [--seconds 40] [--modes sync,async,sync-secagg,async-secagg] [--out FILE]

Every run: digits (``digits-mlp``, Dirichlet alpha = 0.5, seed 0), ``--agents`` in-process
trainers and the aggregator on one in-memory bus (identities off: no signatures or sealing;
the protocol, the rounds and the SecAgg+ crypto are the real ones). Every fit takes a
simulated device time of ``BASE_FIT`` s (``[simulate] fit_seconds``, the seam ``bench/modes.py``
and ``fedbus demo --fit-seconds`` use), ``--slowdown`` times that on the ``--slow`` slow
agents. Sync: every round waits for every agent (the slowest paces it). Async: K = agents/2
updates per version, every agent training (concurrency = agents), s(τ) = 1/√(1+τ). Each run
lasts ``--seconds``; federated evaluation after every round/version. Reported per mode: the
(seconds, accuracy) curve, the seconds to reach 90 % and 93 %, the best and last accuracy,
and the mean seconds per round/version.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.async_settings import AsyncConfig
from agent.bus.base import BusSettings
from agent.bus.memory import MemoryBroker, MemoryBus
from agent.config import (
    AgentConfig,
    AggregatorConfig,
    PluginConfig,
    SecAggConfig,
    SecureAggregation,
    TrainerConfig,
    TrainingMode,
)
from agent.plugin.api import PluginContext
from agent.plugin.loader import CheckedPlugin, find_factory
from agent.plugin.slowed import slowed
from agent.role import Role
from agent.roles.aggregator import Aggregator
from agent.roles.aggregator.records import RoundRecord
from agent.roles.trainer import Trainer

#: Simulated seconds of one fit on a normal device.
BASE_FIT = 0.3
TARGETS = (0.90, 0.93)


class Curve:
    """A ``RoundObserver``: (seconds since start, round, accuracy) of every record."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.points: list[tuple[float, int, float | None]] = []

    def round_started(self, round: int, cohort: Sequence[str]) -> None:
        del round, cohort

    def round_finished(self, record: RoundRecord) -> None:
        self.points.append((time.perf_counter() - self.start, record.round, record.accuracy))


def plugin(index: int, agents: int, slowdown: float) -> CheckedPlugin:
    """Agent ``index``'s digits plugin through the ``[simulate]`` seam (``agent.plugin.slowed``,
    as every ``fedbus run``): each fit takes ``slowdown x max(its time, BASE_FIT)``."""
    options = {"agent_index": index, "num_agents": agents, "partition": "dirichlet", "alpha": 0.5}
    _, factory = find_factory("digits-mlp")
    raw = factory(PluginContext(f"a{index}", options))
    return slowed(CheckedPlugin("digits-mlp", raw), slowdown, BASE_FIT)


def schedule(mode: str, agents: int) -> AggregatorConfig:
    secure = mode.endswith("secagg")
    common: dict[str, Any] = {
        "rounds": 0,
        "min_fit_clients": 4 if secure else 1,
        "min_available_clients": agents,
        "round_timeout": 30.0,
        "eval_timeout": 10.0,
        "secure_aggregation": SecureAggregation.SECAGG_PLUS if secure else SecureAggregation.NONE,
        "secagg": SecAggConfig(stage_timeout=10.0),
    }
    if mode.startswith("async"):
        settings = AsyncConfig(concurrency=agents, buffer_size=max(4, agents // 2))
        return AggregatorConfig(mode=TrainingMode.ASYNC, async_=settings, **common)
    return AggregatorConfig(**{**common, "min_fit_clients": agents})


async def run(
    mode: str, agents: int, slow: int, slowdown: float, seconds: float, tmp: Path
) -> Curve:
    broker, curve = MemoryBroker(), Curve()
    buses, tasks = [], []
    for i in range(agents):
        config = AgentConfig(
            role=Role.TRAINER,
            agent_id=f"a{i}",
            federation="bench",
            bus_url="mem://",
            state_dir=tmp / mode / f"a{i}",
            plugin=PluginConfig(name="digits-mlp"),
            trainer=TrainerConfig(join_retry=0.5),
        )
        bus = MemoryBus(broker, BusSettings(client_id=f"a{i}"))
        await bus.__aenter__()
        buses.append(bus)
        trainer = Trainer(
            config=config, bus=bus, plugin=plugin(i, agents, slowdown if i < slow else 1.0)
        )
        tasks.append(asyncio.create_task(trainer.run()))
    config = AgentConfig(
        role=Role.AGGREGATOR,
        agent_id="aggregator",
        federation="bench",
        bus_url="mem://",
        state_dir=tmp / mode / "aggregator",
        plugin=PluginConfig(name="digits-mlp"),
        aggregator=schedule(mode, agents),
    )
    async with MemoryBus(broker, BusSettings(client_id="aggregator")) as bus:
        aggregator = Aggregator(
            config=config,
            bus=bus,
            plugin_name="digits-mlp",
            initial_weights=plugin(0, agents, 1.0).get_weights(),
            observer=curve,
        )
        curve.start = time.perf_counter()
        try:
            async with asyncio.timeout(seconds):
                await aggregator.run()
        except TimeoutError:
            pass
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for bus in buses:
        await bus.__aexit__(None, None, None)
    return curve


def summary(curve: Curve) -> dict[str, Any]:
    points = [(t, r, a) for t, r, a in curve.points if a is not None]
    reach = {
        f"seconds_to_{round(100 * x)}": next((round(t, 2) for t, _, a in points if a >= x), None)
        for x in TARGETS
    }
    last_t = curve.points[-1][0] if curve.points else 0.0
    return {
        "rounds": len(curve.points),
        "seconds_per_round": round(last_t / len(curve.points), 3) if curve.points else None,
        **reach,
        "best_accuracy": max((a for _, _, a in points), default=None),
        "last_accuracy": points[-1][2] if points else None,
        "curve": [(round(t, 2), r, None if a is None else round(a, 4)) for t, r, a in curve.points],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--slow", type=int, default=3)
    parser.add_argument("--slowdown", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--modes", default="sync,async,sync-secagg,async-secagg")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import tempfile

    report: dict[str, Any] = {
        "agents": args.agents,
        "slow": args.slow,
        "slowdown": args.slowdown,
        "base_fit_seconds": BASE_FIT,
        "seconds": args.seconds,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            curve = asyncio.run(
                run(mode, args.agents, args.slow, args.slowdown, args.seconds, Path(tmp))
            )
            report[mode] = summary(curve)
            print(mode, {k: v for k, v in report[mode].items() if k != "curve"}, file=sys.stderr)
    text = json.dumps(report, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
