"""Buffered asynchronous aggregation (FedBuff, ``[aggregator] mode = "async"``) over a real
mosquitto and a real nats-server: the staleness weight in the applied aggregate, SecAgg+ per
buffer (the aggregator never holds an update; a ready agent that vanishes is a dropout), and
a restart of the aggregator and of an agent.

The trainers and the aggregator run in the test's event loop, each on its own connection;
the fits are gated (``Gated``) so that which version each update trained from is exact.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from structlog.testing import capture_logs

from agent.async_settings import AsyncConfig, Participation, Staleness
from agent.brokers import EmbeddedBroker
from agent.bus.url import bus_from_url
from agent.config import AgentConfig, SecAggConfig, SecureAggregation, TrainingMode
from agent.node import bus_settings
from agent.plugin.api import EvaluateResult, FitResult, Scalar, Weights
from agent.plugin.loader import CheckedPlugin
from agent.roles.aggregator import Aggregator
from agent.roles.aggregator.buffer import Buffer
from agent.roles.aggregator.buffered import Buffered
from agent.roles.aggregator.records import RoundRecord, RunSummary
from agent.roles.trainer import Trainer
from tests.helpers import ToyPlugin, aggregator_config, toy, trainer_config

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]


class Gated(ToyPlugin):
    """``ToyPlugin`` whose every fit first takes a permit the test releases."""

    def __init__(self, value: float, n: int, permits: threading.Semaphore) -> None:
        super().__init__(value, n)
        self.permits = permits

    def fit(self, weights: Weights, config: Mapping[str, Scalar]) -> FitResult:
        self.permits.acquire(timeout=20)
        return super().fit(weights, config)


def async_config(url: str, tmp_path: Path, *, agents: int, rounds: int, **kw: Any) -> AgentConfig:
    config = aggregator_config(url, tmp_path, agents=agents, rounds=rounds)
    schedule = msgspec.structs.replace(
        config.aggregator,
        mode=TrainingMode.ASYNC,
        eval_every=0,
        eval_timeout=2.0,
        status_every=0.3,
        **kw,
    )
    return msgspec.structs.replace(config, aggregator=schedule)


class Fleet:
    """In-process trainers on their own connections; ``stop``/``start`` one of them."""

    def __init__(self, url: str, tmp_path: Path, plugins: Mapping[str, CheckedPlugin]) -> None:
        self.url, self.tmp_path, self.plugins = url, tmp_path, plugins
        self.tasks: dict[str, asyncio.Task[Any]] = {}
        self.buses: dict[str, Any] = {}

    async def start(self, agent_id: str) -> None:
        config = trainer_config(agent_id, self.url, self.tmp_path)
        bus = bus_from_url(self.url, bus_settings(config))
        await bus.__aenter__()
        self.buses[agent_id] = bus
        trainer = Trainer(config=config, bus=bus, plugin=self.plugins[agent_id])
        self.tasks[agent_id] = asyncio.create_task(trainer.run())

    async def stop(self, agent_id: str) -> None:
        task = self.tasks.pop(agent_id)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await self.buses.pop(agent_id).__aexit__(None, None, None)

    async def __aenter__(self) -> Fleet:
        for agent_id in self.plugins:
            await self.start(agent_id)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for agent_id in list(self.tasks):
            await self.stop(agent_id)


class Records:
    """A ``RoundObserver`` keeping the records."""

    def __init__(self) -> None:
        self.records: list[RoundRecord] = []

    def round_started(self, round: int, cohort: Sequence[str]) -> None:
        del round, cohort

    def round_finished(self, record: RoundRecord) -> None:
        self.records.append(record)


async def run_aggregator(
    config: AgentConfig, started: asyncio.Queue[Aggregator], observer: Records | None = None
) -> RunSummary:
    async with bus_from_url(config.bus_url, bus_settings(config)) as bus:
        aggregator = Aggregator(
            config=config,
            bus=bus,
            plugin_name="toy",
            initial_weights=toy(0, 1).get_weights(),
            observer=observer,
        )
        started.put_nowait(aggregator)
        return await aggregator.run()


async def until(condition: Any, seconds: float = 20.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.02)


async def test_a_stale_update_gets_its_staleness_weight(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """ "slow" trains from version 0 while "fast" makes versions 1-3 (K = 1): its update is
    τ = 3 old and moves the model by exactly s(3)·Δ, s(τ) = (1 + τ)^-1 as configured."""
    fast, slow = threading.Semaphore(3), threading.Semaphore(0)
    plugins = {
        "fast": CheckedPlugin("toy", Gated(1.0, 1, fast)),
        "slow": CheckedPlugin("toy", Gated(10.0, 1, slow)),
    }
    settings = AsyncConfig(
        concurrency=2, buffer_size=1, staleness=Staleness.POLYNOMIAL, exponent=1.0
    )
    config = async_config(broker.url, tmp_path, agents=2, rounds=4, async_=settings)
    started: asyncio.Queue[Aggregator] = asyncio.Queue()
    try:
        async with Fleet(broker.url, tmp_path, plugins):
            task = asyncio.create_task(run_aggregator(config, started))
            aggregator = await started.get()
            await until(lambda: aggregator.global_state.version == 3)
            slow.release()  # its update trained from version 0 arrives at version 3
            summary = await task
    finally:
        fast.release(4)
        slow.release(4)
    assert [r.round for r in summary.rounds] == [1, 2, 3, 4]
    assert [r.survivors for r in summary.rounds] == [["fast"]] * 3 + [["slow"]]
    last = summary.rounds[-1]
    assert last.metrics["staleness_max"] == 3
    assert last.metrics["staleness_weight_mean"] == 0.25
    # x3 = 1 (fast's value); x4 = x3 + s(3)·(10 - x0) = 1 + 0.25 · 10
    for array in aggregator.global_state.weights:
        np.testing.assert_array_equal(array, np.full_like(array, 3.5))


async def test_async_secagg_holds_no_update_and_a_vanished_ready_agent_drops_out(
    broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """K = 4 under SecAgg+: "gone" trains first, announces update_ready and vanishes; the
    buffer fills with "a", "b" and "c" and its secure round counts "gone" as a dropout
    without waiting a stage timeout for it (it was known offline when the round opened:
    ``holders.Holders.lost``). The buffer only ever held announcements (no weights), and
    the new model is the mean of the survivors' deltas, learnt from their masked sum."""
    added: list[tuple[Any, Any]] = []
    real_add = Buffer.add

    def spy(self: Buffer, entry: Any, weights: Any = None, base: Any = None) -> None:
        added.append((weights, base))
        real_add(self, entry, weights, base)

    monkeypatch.setattr(Buffer, "add", spy)
    gate = threading.Semaphore(0)
    plugins = {
        "a": CheckedPlugin("toy", Gated(2.0, 1, gate)),
        "b": CheckedPlugin("toy", Gated(4.0, 1, gate)),
        "c": CheckedPlugin("toy", Gated(6.0, 1, gate)),
        "gone": toy(7.0, 1),
    }
    config = async_config(
        broker.url,
        tmp_path,
        agents=4,
        rounds=1,
        async_=AsyncConfig(concurrency=4, buffer_size=4),
        secure_aggregation=SecureAggregation.SECAGG_PLUS,
        secagg=SecAggConfig(stage_timeout=2.0),
    )
    started: asyncio.Queue[Aggregator] = asyncio.Queue()
    try:
        async with Fleet(broker.url, tmp_path, plugins) as fleet:
            task = asyncio.create_task(run_aggregator(config, started))
            aggregator = await started.get()
            buffered = aggregator.buffered
            assert isinstance(buffered, Buffered)
            await until(lambda: buffered.buffer.holds("gone"))
            await fleet.stop("gone")
            await until(lambda: not aggregator.liveness.alive("gone"))
            with capture_logs() as logs:
                gate.release(3)
                summary = await task
    finally:
        gate.release(4)
    stages = [e for e in logs if e["event"] == "secagg_stage_closed"]
    assert len(stages) == 4
    assert not any(e["timed_out"] for e in stages), stages
    assert stages[0]["dropouts"] == ["gone"]
    (record,) = summary.rounds
    assert record.cohort == ["a", "b", "c", "gone"]
    assert record.survivors == ["a", "b", "c"]
    assert record.dropouts == ["gone"]
    assert added  # the buffer never held an update
    assert all(w is None and b is None for w, b in added)
    for array in aggregator.global_state.weights:  # x0 = 0; mean of 2, 4 and 6
        np.testing.assert_allclose(array, 4.0, atol=1e-3)


async def test_async_survives_a_restart_of_the_aggregator_and_of_an_agent(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """The aggregator is cancelled while version 3 fills and restarted on the same state
    dir: it resumes after its last committed version. Then agent "a1" is restarted (the
    others held meanwhile) and contributes to the next version. All 8 versions are recorded
    once, in order (with a1's after its restart)."""
    others = threading.Event()
    others.set()
    plugins = {
        a: toy(v, 1, step=True, delay=0.1, block=others)
        for a, v in {"a1": 1, "a2": 2, "a3": 3}.items()
    }
    config = async_config(
        broker.url,
        tmp_path,
        agents=3,
        rounds=8,
        async_=AsyncConfig(concurrency=3, buffer_size=2),
        join_timeout=20.0,
    )
    started: asyncio.Queue[Aggregator] = asyncio.Queue()
    try:
        async with Fleet(broker.url, tmp_path, plugins) as fleet:
            first = asyncio.create_task(run_aggregator(config, started))
            aggregator = await started.get()
            await until(lambda: aggregator.round >= 3)
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
            # a commit already in its worker thread finishes (a killed process's would not
            # have started or would be whole): let it, before the next aggregator reads
            rounds_dir = config.state_dir / "runs" / "run-0001" / "rounds"
            await asyncio.sleep(0.2)
            await until(lambda: not list(rounds_dir.glob(".*.partial")))
            seen = Records()
            second = asyncio.create_task(run_aggregator(config, started, seen))
            resumed = await started.get()
            assert resumed.opened.resumed is not None
            after = resumed.opened.resumed.checkpoint.round
            assert after >= 2
            await until(lambda: resumed.round >= after + 1)
            others.clear()  # a2 and a3 hold while a1 restarts
            await fleet.stop("a1")
            restarted_at = resumed.round
            fleet.plugins = {**plugins, "a1": toy(1, 1, step=True)}
            await fleet.start("a1")
            await until(
                lambda: any("a1" in r.survivors for r in seen.records if r.round > restarted_at)
            )
            others.set()
            summary = await second
    finally:
        others.set()
    assert [r.round for r in summary.rounds] == list(range(1, 9))
    assert any("a1" in r.survivors for r in summary.rounds if r.round > restarted_at)
    assert summary.failure is None
    runs = config.state_dir / "runs" / "run-0001"
    assert len(msgspec.json.decode((runs / "metrics.json").read_bytes())) == 8


async def test_under_secagg_each_agent_weighs_its_own_stale_update(
    mosquitto: EmbeddedBroker, tmp_path: Path
) -> None:
    """K = 4: f1-f4 make version 1 while "slow" trains from version 0; its update fills
    version 2's secure round with three of them, τ = 1 old: the unmasked mean moves the
    model by s(1)·6/4 (s = 1/√2, the default), the weight the agent applied itself."""
    fast, slow = threading.Semaphore(4), threading.Semaphore(0)
    plugins = {f"f{i}": CheckedPlugin("toy", Gated(2.0, 1, fast)) for i in range(1, 5)}
    plugins["slow"] = CheckedPlugin("toy", Gated(6.0, 1, slow))
    config = async_config(
        mosquitto.url,
        tmp_path,
        agents=5,
        rounds=2,
        async_=AsyncConfig(concurrency=5, buffer_size=4),
        secure_aggregation=SecureAggregation.SECAGG_PLUS,
        secagg=SecAggConfig(stage_timeout=3.0),
    )
    started: asyncio.Queue[Aggregator] = asyncio.Queue()
    try:
        async with Fleet(mosquitto.url, tmp_path, plugins):
            task = asyncio.create_task(run_aggregator(config, started))
            aggregator = await started.get()
            await until(lambda: aggregator.global_state.version == 1)
            fast.release(3)
            slow.release()
            summary = await task
    finally:
        fast.release(8)
        slow.release(4)
    first, second = summary.rounds
    assert first.survivors == ["f1", "f2", "f3", "f4"]
    assert "slow" in second.survivors
    assert len(second.survivors) == 4
    assert second.metrics["staleness_max"] == 1
    # x1 = 2; x2 = x1 + (s(1)·(6 - 0) + 3·(2 - 2)) / 4
    expected = 2.0 + 6.0 / (4 * np.sqrt(2.0))
    for array in aggregator.global_state.weights:
        np.testing.assert_allclose(array, expected, atol=1e-3)


class SlowEvaluation(ToyPlugin):
    """``ToyPlugin`` whose fits take 0.1 s and add 0.1 to every weight (so the model only
    grows and its accuracy stays in [0, 1]), and whose evaluations take 1 s."""

    def fit(self, weights: Weights, config: Mapping[str, Scalar]) -> FitResult:
        time.sleep(0.1)
        return FitResult([w + np.float32(0.1) for w in weights], self.n, {})

    def evaluate(self, weights: Weights, config: Mapping[str, Scalar]) -> EvaluateResult:
        time.sleep(1.0)
        return super().evaluate(weights, config)


async def test_a_version_whose_successor_is_full_is_not_evaluated(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """With ``eval_every = 1``, buffers (K = 1) fill faster than an evaluation ends: a
    version with a full buffer already waiting is published but not evaluated, so the
    version loop never falls behind the buffers (which grew τ without bound); the last
    version is always evaluated."""
    plugins = {a: CheckedPlugin("toy", SlowEvaluation(1.0, 1)) for a in ("a", "b")}
    settings = AsyncConfig(concurrency=2, buffer_size=1)
    config = async_config(broker.url, tmp_path, agents=2, rounds=10, async_=settings)
    config = msgspec.structs.replace(
        config, aggregator=msgspec.structs.replace(config.aggregator, eval_every=1)
    )
    started: asyncio.Queue[Aggregator] = asyncio.Queue()
    async with Fleet(broker.url, tmp_path, plugins):
        summary = await run_aggregator(config, started)
    evaluated = [r.round for r in summary.rounds if r.eval_examples > 0]
    assert [r.round for r in summary.rounds] == list(range(1, 11))
    assert evaluated[-1] == 10
    assert len(evaluated) < 10  # some were superseded before their evaluation
    assert summary.failure is None


async def test_a_rare_agent_counts_by_its_participation_interval(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """FedAU's weights (``participation = "interval"``, K = 2): "fast" fills versions 1 and
    2 alone (intervals of 1/2 version each) while "slow" trains from version 0; version 3 is
    slow's update (interval 2.5) and fast's next (interval 1, mean 0.6), so slow counts
    2.5 / 0.6 times fast's, not equally as in plain FedBuff."""
    fast, slow = threading.Semaphore(4), threading.Semaphore(0)
    plugins = {
        "fast": CheckedPlugin("toy", Gated(1.0, 1, fast)),
        "slow": CheckedPlugin("toy", Gated(10.0, 1, slow)),
    }
    settings = AsyncConfig(
        concurrency=2,
        buffer_size=2,
        staleness=Staleness.CONSTANT,
        participation=Participation.INTERVAL,
    )
    config = async_config(broker.url, tmp_path, agents=2, rounds=3, async_=settings)
    started: asyncio.Queue[Aggregator] = asyncio.Queue()
    try:
        async with Fleet(broker.url, tmp_path, plugins):
            task = asyncio.create_task(run_aggregator(config, started))
            aggregator = await started.get()
            buffered = aggregator.buffered
            assert isinstance(buffered, Buffered)
            await until(lambda: aggregator.global_state.version == 2)
            slow.release()  # trained from version 0: the first of version 3's buffer
            await until(lambda: buffered.buffer.holds("slow"))
            fast.release()
            summary = await task
    finally:
        fast.release(4)
        slow.release(4)
    assert [r.survivors for r in summary.rounds] == [["fast"], ["fast"], ["fast", "slow"]]
    last = summary.rounds[-1]
    assert last.metrics["participation_weight_mean"] == pytest.approx(1.55)
    # fast may have been sent version 1 or 2 (a fit goes out while an update is folded):
    # slow's τ is 2, so fast's base b is 4 - 2 · the mean τ; fast's delta is 1 - x_b
    b = round(4 - 2 * last.metrics["staleness_mean"])
    x = {v: float(buffered.history[v].weights[0].flat[0]) for v in (b, 2)}
    plain = x[2] + (10.0 + (1 - x[b])) / 2  # every update alike (participation = "none")
    expected = x[2] + (2.5 * 10.0 + 0.6 * (1 - x[b])) / (2.5 + 0.6)
    assert abs(expected - plain) > 2
    for array in aggregator.global_state.weights:
        np.testing.assert_allclose(array, expected, rtol=1e-6)
