"""Async SecAgg+ (FedBuff with each buffer aggregated by a SecAgg+ round) over a real broker:
a buffer's secure round whose key stages outlast ``round_timeout`` still collects the held
updates (the regression behind bench/modes.py's 79 %), and a run through a restart of the
aggregator and then of an agent; and a restarted agent that must not join the secure round
of its earlier life.

The fleet, the aggregator runner and the config are those of ``test_async_brokers``.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import msgspec
import pytest

from agent.async_settings import AsyncConfig
from agent.brokers import EmbeddedBroker
from agent.config import SecAggConfig, SecureAggregation
from agent.plugin.loader import CheckedPlugin
from agent.roles.aggregator import Aggregator
from agent.roles.trainer.fit import FitPath
from agent.roles.trainer.secure_fit import SecureFit
from tests.helpers import toy, trainer_config
from tests.test_async_brokers import Fleet, Gated, Records, async_config, run_aggregator, until

pytestmark = [pytest.mark.timeout(60)]


@pytest.mark.broker
async def test_held_updates_are_collected_after_key_stages_slower_than_round_timeout(
    mosquitto: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """K = 4, round_timeout 1 s, every agent's advertise_keys 1.5 s late (a loaded fleet):
    the held updates were trained before the round, so their masked inputs get a stage
    timeout after the key stages, not what is left of round_timeout (before the fix: none,
    ``too_few_survivors``, every member a dropout and the model kept)."""
    real_advertise = SecureFit.advertise

    async def late_advertise(self: SecureFit) -> None:
        await asyncio.sleep(1.5)
        await real_advertise(self)

    monkeypatch.setattr(SecureFit, "advertise", late_advertise)
    gate = threading.Semaphore(4)
    plugins = {f"a{i}": CheckedPlugin("toy", Gated(2.0 * i, 1, gate)) for i in range(1, 5)}
    config = async_config(
        mosquitto.url,
        tmp_path,
        agents=4,
        rounds=1,
        round_timeout=1.0,
        async_=AsyncConfig(concurrency=4, buffer_size=4),
        secure_aggregation=SecureAggregation.SECAGG_PLUS,
        secagg=SecAggConfig(stage_timeout=4.0),
    )
    started: asyncio.Queue[Aggregator] = asyncio.Queue()
    try:
        async with Fleet(mosquitto.url, tmp_path, plugins):
            summary = await run_aggregator(config, started)
    finally:
        gate.release(8)
    (record,) = summary.rounds
    assert record.survivors == ["a1", "a2", "a3", "a4"]
    assert record.dropouts == []
    assert summary.failure is None
    aggregator = started.get_nowait()
    for array in aggregator.global_state.weights:  # x0 = 0; the mean of 2, 4, 6 and 8
        assert array == pytest.approx(5.0, abs=1e-3)


@pytest.mark.broker
async def test_async_secagg_survives_a_restart_of_the_aggregator_and_of_an_agent(
    nats_server: EmbeddedBroker, tmp_path: Path
) -> None:
    """K = 4 of 5 agents under SecAgg+: the aggregator is cancelled after version 2 and
    restarted on its state dir (it resumes after its last committed version; the updates
    held for the old incarnation are refused and retrained); then agent "a1" restarts (its
    held update is lost: at most a dropout) and is a survivor of a later version; 10
    versions leave it several to make, however late its new life is admitted on a loaded
    machine. All 10 versions are recorded once, in order, none failed."""
    others = threading.Event()
    others.set()
    plugins: dict[str, Any] = {
        f"a{i}": toy(i, 1, step=True, delay=0.05, block=others) for i in range(1, 6)
    }
    config = async_config(
        nats_server.url,
        tmp_path,
        agents=5,
        rounds=10,
        async_=AsyncConfig(concurrency=5, buffer_size=4),
        secure_aggregation=SecureAggregation.SECAGG_PLUS,
        secagg=SecAggConfig(stage_timeout=4.0),
        join_timeout=20.0,
    )
    started: asyncio.Queue[Aggregator] = asyncio.Queue()
    try:
        async with Fleet(nats_server.url, tmp_path, plugins) as fleet:
            first = asyncio.create_task(run_aggregator(config, started))
            aggregator = await started.get()
            await until(lambda: aggregator.round >= 2, 30.0)
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
            rounds_dir = config.state_dir / "runs" / "run-0001" / "rounds"
            await asyncio.sleep(0.2)  # a commit already in its worker thread finishes
            await until(lambda: not list(rounds_dir.glob(".*.partial")))
            seen = Records()
            second = asyncio.create_task(run_aggregator(config, started, seen))
            resumed = await started.get()
            assert resumed.opened.resumed is not None
            after = resumed.opened.resumed.checkpoint.round
            assert after >= 1
            await until(lambda: resumed.round >= after + 1, 30.0)
            await fleet.stop("a1")
            restarted_at = resumed.round
            fleet.plugins = {**plugins, "a1": toy(1, 1, step=True, delay=0.05)}
            await fleet.start("a1")
            await until(
                lambda: any("a1" in r.survivors for r in seen.records if r.round > restarted_at),
                30.0,
            )
            summary = await second
    finally:
        others.set()
    assert [r.round for r in summary.rounds] == list(range(1, 11))
    assert summary.failure is None
    assert all(len(r.survivors) >= 3 for r in summary.rounds)
    assert any("a1" in r.survivors for r in summary.rounds if r.round > restarted_at)
    runs = config.state_dir / "runs" / "run-0001"
    assert len(msgspec.json.decode((runs / "metrics.json").read_bytes())) == 10


def test_a_restarted_agent_ignores_a_resent_secure_fit_ins_of_its_earlier_life(
    tmp_path: Path,
) -> None:
    """The NATS inbox resend after a rejoin replays the open SecAgg+ round's ``fit_ins``: a
    fresh life (new keys) that joined it would answer the relayed keys of its earlier life,
    and every neighbour's shares from it would fail to authenticate: the whole buffer's
    round lost (``bad_shares``, 0 inputs; seen in bench/modes.py with duty-cycled agents).
    A secure ``fit_ins`` older than this life's first admission is refused; a plain one is not."""
    started: list[object] = []
    path = FitPath(
        config=trainer_config("a1", "nats://x", tmp_path),
        plugin=toy(1, 1),
        outbox=cast(Any, None),
        models=cast(Any, None),
        progress=cast(Any, SimpleNamespace(round=0)),
        work=cast(Any, SimpleNamespace(start=lambda kind, fn: started.append(kind))),
    )
    path.admitted_at = 100.0

    def fit_ins(timestamp: float, secagg: object) -> Any:
        body = SimpleNamespace(secagg=secagg, hold=False, deadline=5.0)
        return SimpleNamespace(body=body, round=3, envelope=SimpleNamespace(timestamp=timestamp))

    asyncio.run(path.on_fit_ins(fit_ins(99.0, object())))
    assert started == []
    asyncio.run(path.on_fit_ins(fit_ins(99.0, None)))  # a plain fit: trained anew, harmless
    assert len(started) == 1
