"""Revoking an agent mid-round, over a real mosquitto and a real nats-server, under SecAgg+:
it leaves the cohort at once, the round and the next complete with the honest agents (none
of them counted as a dropout), it is told and stops, and the status never shows it online."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from agent.brokers import EmbeddedBroker
from agent.bus.base import BusSettings
from agent.bus.url import bus_from_url
from agent.config import AgentConfig, IdentityConfig, SecAggConfig, SecureAggregation
from agent.errors import AgentRevokedError
from agent.identity import ca, pem
from agent.identity.certificates import identity_of
from agent.identity.registry import Registry
from agent.messages.bodies import Liveness
from agent.node import enrolled_check
from agent.role import Role
from agent.roles.aggregator import Aggregator
from agent.roles.aggregator.records import RunSummary
from agent.roles.aggregator.service import serve
from agent.roles.trainer import Trainer
from tests.helpers import aggregator_config, identity_files, toy, trainer_config

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]

HONEST = ["a1", "a2", "a3"]
REVOKED = "a4"
REVOKE_IN = 2


def identity(
    authority: ca.CertificateAuthority, registry: Registry, agent_id: str, role: Role, where: Path
) -> IdentityConfig:
    """``identity_files`` for ``agent_id``, recorded as enrolled in ``registry``."""
    config = identity_files(authority, agent_id, role, where)
    assert config.cert_file is not None
    cert = pem.load_certificate(config.cert_file)
    registry.record_enrollment(identity_of(cert), cert)
    return config


async def test_revoking_one_of_four_mid_round_under_secagg(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    authority = ca.init_ca("fed")
    pki = tmp_path / "pki"
    registry = Registry.open(tmp_path / "registry.sqlite")
    config = aggregator_config(broker.url, tmp_path, agents=4, rounds=REVOKE_IN + 1)
    schedule = msgspec.structs.replace(
        config.aggregator,
        min_fit_clients=3,
        eval_every=0,
        status_every=0.3,
        secure_aggregation=SecureAggregation.SECAGG_PLUS,
        secagg=SecAggConfig(stage_timeout=3.0),
    )
    config = msgspec.structs.replace(
        config,
        aggregator=schedule,
        identity=identity(authority, registry, "aggregator", Role.AGGREGATOR, pki),
    )

    def trainer_of(agent_id: str) -> AgentConfig:
        ident = identity(authority, registry, agent_id, Role.TRAINER, pki)
        return msgspec.structs.replace(
            trainer_config(agent_id, broker.url, tmp_path), identity=ident
        )

    configs = {a: trainer_of(a) for a in [*HONEST, REVOKED]}
    buses = {a: bus_from_url(broker.url, BusSettings(client_id=a)) for a in configs}
    # the revoked agent trains slowly: it is revoked before its masked input is due
    plugins = {
        a: toy(float(i + 1), 1, delay=3.0 if a == REVOKED else 0.2) for i, a in enumerate(configs)
    }
    trainers = {a: Trainer(config=configs[a], bus=buses[a], plugin=plugins[a]) for a in configs}
    built: list[Aggregator] = []
    told: list[AgentRevokedError] = []

    def build() -> Aggregator:
        built.append(
            Aggregator(
                config=config,
                bus=agg_bus,
                plugin_name="toy",
                initial_weights=toy(0, 1).get_weights(),
                revoked=enrolled_check(registry),
            )
        )
        return built[-1]

    async def play(_: Aggregator, work: object) -> RunSummary | None:
        return await work  # type: ignore[misc]

    async def finished(_: Aggregator) -> None:
        return None

    async def run_revoked() -> None:
        try:
            await trainers[REVOKED].run()
        except* AgentRevokedError as group:
            told.extend(group.exceptions)  # type: ignore[arg-type]

    async def revoke_mid_round() -> None:
        while not built or built[-1].round < REVOKE_IN:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # keys advertised, training under way
        await asyncio.to_thread(registry.revoke, REVOKED)

    agg_bus = bus_from_url(broker.url, BusSettings(client_id="aggregator"))
    try:
        for bus in [*buses.values(), agg_bus]:
            await bus.__aenter__()
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(trainers[a].run()) for a in HONEST]
            revoked_task = tg.create_task(run_revoked())
            tg.create_task(revoke_mid_round())
            summary = await serve(
                build,
                after_run=config.aggregator.after_run,
                play=play,
                finished=finished,
                registry=registry,
            )
            status = built[-1].board.federation_status()
            await asyncio.wait_for(revoked_task, 15)
            for task in tasks:
                task.cancel()
    finally:
        for bus in [*buses.values(), agg_bus]:
            await bus.__aexit__(None, None, None)
        registry.close()
    assert summary is not None
    during, after = summary.rounds[REVOKE_IN - 1], summary.rounds[REVOKE_IN]
    assert during.revoked == [REVOKED]
    assert during.dropouts == []
    assert sorted(during.survivors) == HONEST
    assert REVOKED not in after.cohort
    assert sorted(after.survivors) == HONEST
    assert after.dropouts == []
    assert told, "the revoked trainer was not told"
    a4 = status.agents[REVOKED]
    assert a4.revoked
    assert a4.state is Liveness.OFFLINE
