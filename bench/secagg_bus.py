"""Benchmark: SecAgg+ rounds over a real broker with every agent in this one process (issue 15,
item 6): where a round's time goes, stage by stage, and how many messages cross the bus.

Prints one JSON object. For each n in --n, a nats-server (or mosquitto, --broker mqtt) is
started on loopback, n trainer roles (``agent.roles.trainer.Trainer``, each its own connection)
and the aggregator (``agent.roles.aggregator.Aggregator``) run in this process's event loop
(one core for all agents, the other for the broker), for --rounds SecAgg+ rounds of a model of
d = --d float32 parameters, identities off. Reported:

- ``round_s``: each round's wall time (the aggregator's ``RoundRecord.seconds``; the last
  round includes the federated evaluation), and ``median_round_s`` over rounds 2.. but the last;
- ``stages``: the aggregator's ``secagg_stage_closed`` lines of those rounds (medians of their
  seconds: collecting, closing, relaying), so a slow stage shows where it is slow;
- ``published``: messages per round by topic, counted at every connection's publish.

With --old the same is measured again in this process with the former client setup (every
client building the whole neighbour graph, ``secagg_scale.legacy_neighbours``), for the ratio.

    .venv/bin/python bench/secagg_bus.py [--n 100 300] [--d 100000] [--rounds 4] [--old]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
from secagg_round import sig
from secagg_scale import legacy_neighbours
from structlog.testing import capture_logs

from agent.brokers import EmbeddedBroker
from agent.bus.url import bus_from_url
from agent.config import (
    AgentConfig,
    AggregatorConfig,
    PluginConfig,
    SecAggConfig,
    SecureAggregation,
    TrainerConfig,
)
from agent.messages import topics
from agent.node import bus_settings
from agent.plugin.api import EvaluateResult, FitResult, Scalar, Weights
from agent.plugin.loader import CheckedPlugin
from agent.role import Role
from agent.roles.aggregator import Aggregator
from agent.roles.trainer import Trainer

FEDERATION = "bench"


class Flat:
    """A plugin with one float32 array of d parameters; fit adds ``value`` to it."""

    def __init__(self, d: int, value: float, n: int) -> None:
        self.d, self.value, self.n = d, value, n

    def get_weights(self) -> Weights:
        return [np.zeros(self.d, np.float32)]

    def fit(self, weights: Weights, config: Mapping[str, Scalar]) -> FitResult:
        return FitResult([weights[0] + np.float32(self.value)], self.n, {})

    def evaluate(self, weights: Weights, config: Mapping[str, Scalar]) -> EvaluateResult:
        return EvaluateResult(float(np.mean(weights[0])), self.n, {})


def configs(url: str, state: Path, n: int, rounds: int) -> AgentConfig:
    return AgentConfig(
        role=Role.AGGREGATOR,
        agent_id="aggregator",
        federation=FEDERATION,
        bus_url=url,
        state_dir=state / "aggregator",
        plugin=PluginConfig(name="flat"),
        aggregator=AggregatorConfig(
            rounds=rounds,
            min_fit_clients=n,
            min_available_clients=n,
            max_fit_clients=n,
            join_timeout=300.0,
            round_timeout=300.0,
            eval_every=0,
            eval_timeout=120.0,
            secure_aggregation=SecureAggregation.SECAGG_PLUS,
            secagg=SecAggConfig(stage_timeout=120.0),
        ),
    )


def trainer(url: str, state: Path, agent_id: str) -> AgentConfig:
    return AgentConfig(
        role=Role.TRAINER,
        agent_id=agent_id,
        federation=FEDERATION,
        bus_url=url,
        state_dir=state / agent_id,
        plugin=PluginConfig(name="flat"),
        trainer=TrainerConfig(join_retry=2.0, model_wait=120.0),
    )


def counted(bus: Any, counts: Counter[str]) -> Any:
    """``bus`` with every publish counted by its topic's table name."""
    publish = bus.publish

    async def counting(topic: str, payload: bytes, **kw: Any) -> Any:
        spec = topics.classify(topic, FEDERATION)
        counts[spec[0].name if spec else "other"] += 1
        return await publish(topic, payload, **kw)

    bus.publish = counting
    return bus


async def federate(url: str, state: Path, n: int, d: int, rounds: int) -> tuple[Any, Counter[str]]:
    counts: Counter[str] = Counter()
    buses: list[Any] = []
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = []
            for i in range(n):
                config = trainer(url, state, f"agent-{i:04d}")
                bus = counted(bus_from_url(url, bus_settings(config)), counts)
                await bus.__aenter__()
                buses.append(bus)
                plugin = CheckedPlugin("flat", Flat(d, 0.01 * (i % 7), 10 + i % 50))
                tasks.append(tg.create_task(Trainer(config=config, bus=bus, plugin=plugin).run()))
            config = configs(url, state, n, rounds)
            async with counted(bus_from_url(url, bus_settings(config)), counts) as agg_bus:
                aggregator = Aggregator(
                    config=config,
                    bus=agg_bus,
                    plugin_name="flat",
                    initial_weights=Flat(d, 0, 1).get_weights(),
                )
                summary = await aggregator.run()
            for task in tasks:
                task.cancel()
    finally:
        for bus in buses:
            await bus.__aexit__(None, None, None)
    return summary, counts


def measure(n: int, d: int, *, rounds: int, broker: str, old: bool) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="fedbus-secagg-bus-") as tmp,
        EmbeddedBroker("nats" if broker == "nats" else "mqtt") as server,
        capture_logs() as logs,
    ):
        started = time.perf_counter()
        former = mock.patch(
            "agent.secagg.client.neighbours_of",
            lambda cohort, agent_id, *, k, seed: legacy_neighbours(cohort, k=k, seed=seed)[
                agent_id
            ],
        )
        with former if old else nullcontext():
            summary, counts = asyncio.run(federate(server.url, Path(tmp), n, d, rounds))
        elapsed = time.perf_counter() - started
    records = summary.rounds
    steady = [r.round for r in records[1:-1]] or [r.round for r in records]
    lines = [e for e in logs if e.get("event") == "secagg_stage_closed"]
    stages: dict[str, Any] = {}
    for i, e in enumerate(lines):  # four lines a round, in order (no round aborts here)
        if i // 4 + 1 in steady:
            stages.setdefault(e["stage"], []).append(e)
    fields = ("seconds", "collect_seconds", "close_seconds", "relay_seconds")
    return {
        "n": n,
        "d": d,
        "old_client_setup": old,
        "broker": broker,
        "survivors": [len(r.survivors) for r in records],
        "round_s": [sig(r.seconds) for r in records],
        "median_round_s": sig(statistics.median(r.seconds for r in records if r.round in steady)),
        "stages": {
            stage: {f: sig(statistics.median(e[f] for e in got)) for f in fields}
            | {"relayed": got[-1]["relayed"], "relay_bytes": got[-1]["relay_bytes"]}
            for stage, got in stages.items()
        },
        "published_per_round": {k: sig(v / len(records), 4) for k, v in sorted(counts.items())},
        "elapsed_s": sig(elapsed, 3),
        "load_average_1min": sig(os.getloadavg()[0], 3),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, nargs="+", default=[100, 300])
    parser.add_argument("--d", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--broker", choices=["nats", "mqtt"], default="nats")
    parser.add_argument("--old", action="store_true", help="also measure the former setup")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    runs = []
    for n in args.n:
        for old in (False, True) if args.old else (False,):
            runs.append(measure(n, args.d, rounds=args.rounds, broker=args.broker, old=old))
            print(json.dumps(runs[-1]), file=sys.stderr)
    text = json.dumps({"benchmark": "secagg+ over the bus", "runs": runs}, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
