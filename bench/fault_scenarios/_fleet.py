"""The parts of the fleet scenarios (``fleet.py``): a cheap constant plugin, configs, an
in-process federation on a real broker whose logs are captured, and how to read them."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from structlog.testing import capture_logs

from agent.brokers import EmbeddedBroker
from agent.bus.base import Bus, BusSettings
from agent.bus.url import bus_from_url
from agent.config import (
    AgentConfig,
    AggregatorConfig,
    PluginConfig,
    TrainerConfig,
)
from agent.plugin.api import EvaluateResult, FitResult, Scalar, Weights
from agent.plugin.loader import CheckedPlugin
from agent.role import Role
from agent.roles.aggregator import Aggregator
from agent.roles.aggregator.records import RoundRecord, RunSummary
from agent.roles.trainer import Trainer

FED = "fleet"
FAST = {"backoff_initial": 0.05, "backoff_max": 1.0, "publish_timeout": 10.0}
Json = dict[str, Any]


class Constant:
    """A plugin whose fit returns weights filled with ``value`` after ``fit_seconds`` (in the
    fit's worker thread): cheap, and FedAvg is exact."""

    def __init__(
        self,
        value: float,
        n: int = 10,
        *,
        fit_seconds: float = 0.0,
        gate: threading.Event | None = None,
    ) -> None:
        self.value, self.n, self.fit_seconds, self.gate = value, n, fit_seconds, gate

    def get_weights(self) -> Weights:
        return [np.zeros((16, 8), np.float32), np.zeros(8, np.float32)]

    def num_examples(self) -> int:
        return self.n

    def fit(self, weights: Weights, config: Mapping[str, Scalar]) -> FitResult:
        del config
        time.sleep(self.fit_seconds)
        if self.gate is not None:
            self.gate.wait(60)  # e.g. until the flood is over: the round stays open meanwhile
        return FitResult([np.full_like(w, self.value) for w in weights], self.n, {})

    def evaluate(self, weights: Weights, config: Mapping[str, Scalar]) -> EvaluateResult:
        del config
        return EvaluateResult(float(np.mean(weights[0])), self.n, {"accuracy": 0.5})


def schedule(**kw: Any) -> AggregatorConfig:
    base: dict[str, Any] = {
        "rounds": 3,
        "min_fit_clients": 2,
        "join_timeout": 30.0,
        "round_timeout": 8.0,
        "eval_timeout": 8.0,
    }
    return AggregatorConfig(**{**base, **kw})


def agent_config(agent_id: str, url: str, work: Path, *, plugin: str = "constant") -> AgentConfig:
    return AgentConfig(
        role=Role.TRAINER,
        agent_id=agent_id,
        federation=FED,
        bus_url=url,
        state_dir=work / agent_id,
        plugin=PluginConfig(name=plugin),
        trainer=TrainerConfig(join_retry=0.3, model_wait=10.0, heartbeat=2.0),
    )


def aggregator(
    url: str, work: Path, sched: AggregatorConfig, plugin: str = "constant"
) -> AgentConfig:
    return AgentConfig(
        role=Role.AGGREGATOR,
        agent_id="aggregator",
        federation=FED,
        bus_url=url,
        state_dir=work / "aggregator",
        plugin=PluginConfig(name=plugin),
        aggregator=sched,
    )


class Hooks:
    """A ``RoundObserver`` that runs ``on_start(round)`` as a task of the running loop."""

    def __init__(self, on_start: Callable[[int], Awaitable[None]] | None = None) -> None:
        self._on_start = on_start
        self.tasks: list[asyncio.Task[None]] = []
        self.started: dict[int, float] = {}

    def round_started(self, round: int, cohort: Sequence[str]) -> None:
        del cohort
        self.started[round] = time.monotonic()
        if self._on_start is not None:
            self.tasks.append(asyncio.get_running_loop().create_task(self._on_start(round)))

    def round_finished(self, record: RoundRecord) -> None:
        del record


async def federate(
    broker: EmbeddedBroker,
    work: Path,
    sched: AggregatorConfig,
    *,
    honest: int,
    hooks: Hooks | None = None,
    extra: Callable[[], Awaitable[None]] | None = None,
    fit_seconds: float = 0.0,
    gate: threading.Event | None = None,
) -> tuple[RunSummary, list[dict[str, Any]]]:
    """``honest`` in-process trainers (``Constant``) and the aggregator on ``broker``; ``extra``
    runs beside them (a silent agent, a flooder) and is cancelled at the end."""
    buses: list[Bus] = []
    tasks: list[asyncio.Task[Any]] = []
    with capture_logs() as logs:
        try:
            for i in range(honest):
                agent_id = f"agent-{i}"
                bus = bus_from_url(broker.url, BusSettings(client_id=agent_id, **FAST))  # type: ignore[arg-type]
                await bus.__aenter__()
                buses.append(bus)
                trainer = Trainer(
                    config=agent_config(agent_id, broker.url, work),
                    bus=bus,
                    plugin=CheckedPlugin(
                        "constant", Constant(float(i), fit_seconds=fit_seconds, gate=gate)
                    ),
                )
                tasks.append(asyncio.create_task(trainer.run()))
            if extra is not None:
                tasks.append(asyncio.create_task(extra()))
            agg_bus = bus_from_url(broker.url, BusSettings(client_id="aggregator", **FAST))  # type: ignore[arg-type]
            await agg_bus.__aenter__()
            buses.append(agg_bus)
            summary = await Aggregator(
                config=aggregator(broker.url, work, sched),
                bus=agg_bus,
                plugin_name="constant",
                initial_weights=Constant(0).get_weights(),
                observer=hooks,
            ).run()
        finally:
            for task in [*tasks, *(hooks.tasks if hooks else [])]:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for bus in buses:
                await bus.__aexit__(None, None, None)
    return summary, list(logs)


def waited_rounds(logs: list[dict[str, Any]]) -> list[int]:
    """Rounds in which the aggregator waited until a deadline for someone (captured logs
    carry no context variables: the round is counted from ``round_started`` lines)."""
    events = ("agents_missed_deadline", "evaluation_incomplete")
    current, waited = 0, set()
    for e in logs:
        if e["event"] == "round_started":
            current += 1
        elif e["event"] in events:
            waited.add(current)
    return sorted(waited)


def rounds_of(summary: RunSummary) -> list[Json]:
    return [
        {
            "round": r.round,
            "cohort": len(r.cohort),
            "survivors": len(r.survivors),
            "seconds": round(r.seconds, 3),
            "model_version": r.model_version,
        }
        for r in summary.rounds
    ]


def digits_config(config: AgentConfig, i: int, n: int) -> AgentConfig:
    import msgspec

    options = {"agent_index": i, "num_agents": n, "partition": "iid"}
    return msgspec.structs.replace(config, plugin=PluginConfig(name="digits-mlp", options=options))
