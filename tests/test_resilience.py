"""Resilience on real brokers: a broker restart in the middle of a federation, and a plugin
that raises in fit."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.brokers import EmbeddedBroker
from agent.bus.base import BusSettings
from agent.bus.url import bus_from_url
from agent.plugin.api import FitResult, Scalar, Weights
from agent.plugin.loader import CheckedPlugin
from agent.roles.aggregator import Aggregator
from agent.roles.aggregator.records import RoundRecord, RunSummary
from agent.roles.trainer import Trainer
from tests.helpers import ToyPlugin, aggregator_config, toy, trainer_config

pytestmark = [pytest.mark.broker, pytest.mark.timeout(90)]
FAST = {"backoff_initial": 0.05, "backoff_max": 0.5, "publish_timeout": 2.0}


class RaisesOnce(ToyPlugin):
    """fit() raises in round 1, then trains like ToyPlugin."""

    def fit(self, weights: Weights, config: Mapping[str, Scalar]) -> FitResult:
        if config.get("round") == 1:
            raise RuntimeError("out of memory (simulated)")
        return super().fit(weights, config)


Outcome = tuple[RunSummary, dict[str, Trainer], list[asyncio.Task[None]]]


async def federate(
    broker: EmbeddedBroker,
    tmp_path: Path,
    plugins: dict[str, CheckedPlugin],
    *,
    rounds: int,
    observer: Any = None,
    trainers: dict[str, Trainer] | None = None,
) -> Outcome:
    """Run a federation of ``plugins`` on ``broker``; ``trainers``, when given, is filled
    with the trainers as they start (an observer can read their status mid-run)."""
    config = aggregator_config(
        broker.url, tmp_path, agents=len(plugins), rounds=rounds, round_timeout=8.0
    )
    buses = []
    trainers = {} if trainers is None else trainers
    tasks: list[asyncio.Task[None]] = []
    try:
        for agent_id, plugin in plugins.items():
            bus = bus_from_url(broker.url, BusSettings(client_id=agent_id, **FAST))  # type: ignore[arg-type]
            await bus.__aenter__()
            buses.append(bus)
            trainers[agent_id] = Trainer(
                config=trainer_config(agent_id, broker.url, tmp_path), bus=bus, plugin=plugin
            )
            tasks.append(asyncio.create_task(trainers[agent_id].run()))
        agg_bus = bus_from_url(broker.url, BusSettings(client_id="aggregator", **FAST))  # type: ignore[arg-type]
        await agg_bus.__aenter__()
        buses.append(agg_bus)
        summary = await Aggregator(
            config=config,
            bus=agg_bus,
            plugin_name="toy",
            initial_weights=toy(0, 1).get_weights(),
            observer=observer,
        ).run()
        await asyncio.sleep(0.2)
        alive = [t for t in tasks if not t.done()]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for bus in buses:
            await bus.__aexit__(None, None, None)
    return summary, trainers, alive


async def test_a_broker_restart_mid_federation(broker: EmbeddedBroker, tmp_path: Path) -> None:
    """The real broker is restarted as round 2 starts: the buses reconnect with backoff,
    resubscribe, the agents rejoin, and the federation finishes all four rounds, the last
    with every agent."""

    class RestartInRound2:
        def round_started(self, round: int, cohort: Sequence[str]) -> None:
            if round == 2:
                asyncio.get_running_loop().run_in_executor(None, broker.restart)

        def round_finished(self, record: RoundRecord) -> None:
            pass

    plugins = {"a1": toy(1.0, 1), "a2": toy(3.0, 1)}
    with capture_logs() as logs:
        summary, _, _ = await federate(
            broker, tmp_path, plugins, rounds=4, observer=RestartInRound2()
        )
    assert [r.round for r in summary.rounds] == [1, 2, 3, 4]
    assert summary.rounds[0].survivors == ["a1", "a2"]
    assert summary.rounds[-1].survivors == ["a1", "a2"]
    assert summary.rounds[-1].loss == pytest.approx(2.0)
    assert any(e["event"] == "bus_connected" and e.get("reconnect") for e in logs)


async def test_a_plugin_that_raises_in_fit(broker: EmbeddedBroker, tmp_path: Path) -> None:
    """An agent whose plugin raises in round 1 stays up: round 1 completes without it (its
    status says the fit failed), and in round 2 it trains again."""
    plugins = {
        "a1": toy(1.0, 1),
        "a2": toy(3.0, 1),
        "flaky": CheckedPlugin("toy", RaisesOnce(5.0, 1)),
    }
    trainers: dict[str, Trainer] = {}
    status_at_end: dict[int, str] = {}

    class StatusAtRoundEnd:
        def round_started(self, round: int, cohort: Sequence[str]) -> None:
            pass

        def round_finished(self, record: RoundRecord) -> None:
            status_at_end[record.round] = trainers["flaky"].status

    with capture_logs() as logs:
        summary, _, alive = await federate(
            broker,
            tmp_path,
            plugins,
            rounds=2,
            observer=StatusAtRoundEnd(),
            trainers=trainers,
        )
    first, second = summary.rounds
    assert first.survivors == ["a1", "a2"]
    assert first.dropouts == ["flaky"]
    assert second.survivors == ["a1", "a2", "flaky"]
    assert any(e["event"] == "fit_failed" for e in logs)
    assert len(alive) == 3  # no trainer task died
    # When round 1 ends, the flaky agent's status names the failed fit, its round and error.
    assert "round 1: fit failed" in status_at_end[1]
    assert "out of memory (simulated)" in status_at_end[1]
    # After round 2 it no longer reports a failure: it trained again.
    assert "fit failed" not in trainers["flaky"].status
