"""A federation with identities on (signed messages, sealed updates), on the in-memory bus:
it trains as before, nothing travels unsigned, updates travel sealed, a revoked agent is out."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import pytest
from structlog.testing import capture_logs

from agent.bus.base import BusSettings
from agent.bus.memory import MemoryBroker, MemoryBus
from agent.config import AgentConfig, SecureAggregation
from agent.identity import ca
from agent.messages.envelope import Envelope
from agent.messages.sealing import SEALED_KINDS
from agent.messages.signing import is_signed, unwrap
from agent.role import Role
from tests.helpers import aggregator_config, federate_in_memory, toy, trainer_config
from tests.helpers import identity_files as credentials

pytestmark = pytest.mark.timeout(60)


async def federate(
    tmp_path: Path, agents: list[str], *, secure: bool, revoked: frozenset[str] = frozenset()
) -> tuple[Any, list[bytes]]:
    authority = ca.init_ca("fed")
    broker = MemoryBroker()
    wire: list[bytes] = []
    agg_config = aggregator_config(
        "mem://", tmp_path, agents=len(agents) - len(revoked), rounds=2, round_timeout=5.0
    )
    schedule = agg_config.aggregator
    if secure:
        schedule = msgspec.structs.replace(
            schedule, min_fit_clients=3, secure_aggregation=SecureAggregation.SECAGG_PLUS
        )
    pki = tmp_path / "pki"
    agg_identity = credentials(authority, "aggregator", Role.AGGREGATOR, pki)
    agg_config = msgspec.structs.replace(agg_config, aggregator=schedule, identity=agg_identity)

    def configure(agent_id: str) -> AgentConfig:
        identity = credentials(authority, agent_id, Role.TRAINER, pki)
        return msgspec.structs.replace(
            trainer_config(agent_id, "mem://", tmp_path), identity=identity
        )

    plugins = {agent_id: toy(float(i + 1), 1) for i, agent_id in enumerate(agents)}
    async with MemoryBus(broker, BusSettings(client_id="spy")) as spy:
        await spy.subscribe("fl/#")

        async def record() -> None:
            async for raw in spy.messages():
                wire.append(raw.payload)

        recorder = asyncio.create_task(record())
        summary, _ = await federate_in_memory(
            plugins,
            agg_config,
            configure,
            broker=broker,
            revoked=lambda ident: ident.agent_id in revoked,
        )
        recorder.cancel()
    return summary, wire


@pytest.mark.parametrize("secure", [False, True], ids=["fedavg", "secagg+"])
async def test_an_identity_federation_trains_signed_and_sealed(
    tmp_path: Path, secure: bool
) -> None:
    """Three enrolled agents train two rounds (plain FedAvg and SecAgg+): the model is the
    mean of 1, 2, 3; every payload on the bus is signed, and every update-like body is
    sealed to the aggregator."""
    summary, wire = await federate(tmp_path, ["a1", "a2", "a3"], secure=secure)
    assert [r.survivors for r in summary.rounds] == [["a1", "a2", "a3"]] * 2
    assert summary.rounds[-1].loss == pytest.approx(2.0, abs=1e-3)
    assert wire
    assert all(is_signed(p) for p in wire)
    envelopes = [msgspec.msgpack.decode(unwrap(p)[0], type=Envelope) for p in wire]
    sealable = [e for e in envelopes if e.kind in SEALED_KINDS]
    assert sealable
    assert all(e.sealed for e in sealable)


async def test_a_revoked_agent_takes_no_part(tmp_path: Path) -> None:
    """An agent the registry calls revoked is never admitted: its join is dropped with
    reason revoked, and the rounds run with the others."""
    with capture_logs() as logs:
        summary, _ = await federate(
            tmp_path, ["a1", "a2", "bad"], secure=False, revoked=frozenset({"bad"})
        )
    assert all(r.cohort == ["a1", "a2"] for r in summary.rounds)
    assert any(e["event"] == "message_dropped" and e["reason"] == "revoked" for e in logs)
