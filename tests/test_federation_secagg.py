"""SecAgg+ rounds through the real roles on the in-memory bus: the aggregator learns only the
sum, dropouts are survived, an abort keeps the previous model."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from structlog.testing import capture_logs

from agent.bus.base import BusSettings
from agent.bus.memory import MemoryBroker, MemoryBus
from agent.config import AgentConfig, SecAggConfig, SecureAggregation
from agent.plugin.loader import CheckedPlugin
from agent.roles.aggregator.records import RunSummary
from agent.roles.trainer import Trainer
from tests.helpers import aggregator_config, federate_in_memory, toy, trainer_config

pytestmark = pytest.mark.timeout(60)


def secure_config(tmp_path: Path, agents: int, **kw: Any) -> AgentConfig:
    config = aggregator_config("mem://", tmp_path, agents=agents, round_timeout=5.0)
    secagg = SecAggConfig(stage_timeout=2.0, **kw.pop("secagg", {}))
    schedule = msgspec.structs.replace(
        config.aggregator,
        min_fit_clients=3,
        secure_aggregation=SecureAggregation.SECAGG_PLUS,
        secagg=secagg,
        **kw,
    )
    return msgspec.structs.replace(config, aggregator=schedule)


async def federate(
    tmp_path: Path,
    plugins: dict[str, CheckedPlugin],
    config: AgentConfig,
    *,
    trainer_kw: dict[str, Any] | None = None,
    broker: MemoryBroker | None = None,
) -> tuple[RunSummary, dict[str, Trainer]]:
    def configure(agent_id: str) -> AgentConfig:
        cfg = trainer_config(agent_id, "mem://", tmp_path)
        if trainer_kw:
            cfg = msgspec.structs.replace(
                cfg, trainer=msgspec.structs.replace(cfg.trainer, **trainer_kw)
            )
        return cfg

    return await federate_in_memory(plugins, config, configure, broker=broker)


async def test_secure_rounds_give_the_weighted_mean(tmp_path: Path) -> None:
    """Five agents with values 1..5 and 1..5 examples: under SecAgg+ each round's model is
    Σ n·v / Σ n = 55/15 (to quantization precision), and only masked inputs travel."""
    plugins = {f"a{i}": toy(float(i), i) for i in range(1, 6)}
    with capture_logs() as logs:
        summary, trainers = await federate(tmp_path, plugins, secure_config(tmp_path, 5))
    assert [r.survivors for r in summary.rounds] == [sorted(plugins)] * 2
    assert summary.rounds[0].num_examples == 15
    assert summary.rounds[-1].loss == pytest.approx(55 / 15, abs=3.2e-4)
    sent = [e for e in logs if e["event"] == "update_sent"]
    assert sent
    assert all(e["masked"] for e in sent)
    # Everyone answered every stage, so no stage waited for its deadline.
    closed = [e for e in logs if e["event"] == "secagg_stage_closed"]
    assert len(closed) == 2 * 4
    assert not any(e["timed_out"] for e in closed)
    for t in trainers.values():
        assert t.model is not None
        # bound: survivors · step · max_weight / Σ weights = 5 · (16 / (2^24 − 1)) · 1000 / 15
        np.testing.assert_allclose(t.model.weights[0], 55 / 15, atol=3.2e-4)


async def test_silent_agents_are_dropouts_and_the_round_completes(tmp_path: Path) -> None:
    """Two of six agents never finish training (they advertised and shared keys, then went
    silent): the round unmasks the other four's sum at its deadline."""
    never = threading.Event()
    plugins = {f"a{i}": toy(float(i), 1) for i in range(1, 5)}
    plugins |= {"z1": toy(100.0, 1, block=never), "z2": toy(100.0, 1, block=never)}
    config = secure_config(tmp_path, 6, rounds=1, round_timeout=3.0)
    try:
        summary, _ = await federate(tmp_path, plugins, config)
    finally:
        never.set()
    record = summary.rounds[0]
    assert record.survivors == ["a1", "a2", "a3", "a4"]
    assert record.dropouts == ["z1", "z2"]
    assert record.model_version == 1
    assert record.loss == pytest.approx(2.5, abs=1e-3)


async def test_below_threshold_the_round_aborts_and_the_model_stays(tmp_path: Path) -> None:
    """Four agents with k = 3, t = 2, three of them silent: the round aborts with a logged
    reason and the global model stays at version 0."""
    never = threading.Event()
    plugins = {"a1": toy(1.0, 1)} | {f"z{i}": toy(9.0, 1, block=never) for i in range(3)}
    config = secure_config(tmp_path, 4, rounds=1, round_timeout=2.0)
    try:
        with capture_logs() as logs:
            summary, trainers = await federate(tmp_path, plugins, config)
    finally:
        never.set()
    record = summary.rounds[0]
    assert record.survivors == []
    assert record.model_version == 0
    aborted = [e for e in logs if e["event"] == "secagg_aborted"]
    assert aborted
    assert aborted[0]["reason"] == "too_few_survivors"
    assert trainers["a1"].model is not None
    assert trainers["a1"].model.version == 0


async def test_an_agent_that_requires_secagg_refuses_plaintext_rounds(tmp_path: Path) -> None:
    """With require_secure_aggregation an agent never sends a plaintext update: the plain
    round goes on without it."""
    config = aggregator_config("mem://", tmp_path, agents=3, rounds=1, round_timeout=2.0)
    plugins = {"a1": toy(1.0, 1), "a2": toy(2.0, 1), "a3": toy(3.0, 1)}
    with capture_logs() as logs:
        summary, _ = await federate(
            tmp_path, plugins, config, trainer_kw={"require_secure_aggregation": True}
        )
    assert summary.rounds[0].survivors == []
    assert any(e["event"] == "fit_refused" and e["reason"] == "plaintext_round" for e in logs)


async def test_plaintext_updates_are_refused_in_a_secure_round(tmp_path: Path) -> None:
    """A model_update in the clear during a SecAgg+ round is rejected, never averaged."""
    from agent.messages import topics
    from agent.messages.bodies import ModelUpdate
    from agent.messages.tensors import to_tensors
    from agent.runtime.outbox import Outbox

    gate = threading.Event()  # training waits until the rogue update went out
    plugins = {f"a{i}": toy(float(i), 1, block=gate) for i in range(1, 4)}
    config = secure_config(tmp_path, 3, rounds=1)
    broker = MemoryBroker()
    rogue = MemoryBus(broker, BusSettings(client_id="a1-rogue"))
    await rogue.__aenter__()
    outbox = Outbox(rogue, federation="fed", sender="a1")

    async def inject() -> None:
        await asyncio.sleep(0.3)
        body = ModelUpdate(
            model_version=0,
            num_examples=1,
            tensors=to_tensors([np.full((3, 2), 1e6, np.float32), np.full(2, 1e6, np.float32)]),
        )
        await outbox.send(topics.UPDATE, body, round=1, agent_id="a1")
        await asyncio.sleep(0.1)
        gate.set()

    with capture_logs() as logs:
        injector = asyncio.create_task(inject())
        summary, _ = await federate(tmp_path, plugins, config, broker=broker)
        await injector
    await rogue.__aexit__(None, None, None)
    assert summary.rounds[0].loss == pytest.approx(2.0, abs=1e-3)
    assert any(e.get("reason") == "plaintext_in_secure_round" for e in logs)
