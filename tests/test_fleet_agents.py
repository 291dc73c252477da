"""Fleets (``agent.fleet``): many trainers in one process, enrolled from one process.

- five trainers with identities on, enrolled concurrently and run as one ``Fleet`` (the same
  ``run_node`` path as ``fedbus run``, each with its own connection, key and plugin), join a
  locked-down broker and finish a SecAgg+ round with every member;
- twenty devices enrolled at once: a bad token and a used token are refused for just those
  two devices, the other eighteen get checked certificates and configs.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.brokers import BrokerKind
from agent.config import AgentConfig
from agent.demo.configs import FEDERATION, aggregator_config, enrolled_config, plugin_options
from agent.demo.options import DemoOptions
from agent.demo.pki import (
    ENROLL_ID,
    create_pki,
    enroll_agents,
    enrollment_service,
    fleet_devices,
    lock_down,
    tls_files,
)
from agent.errors import IdentityError
from agent.fleet.enroll import enroll_fleet
from agent.fleet.members import Fleet
from agent.fleet.processes import spread
from agent.identity.registry import Registry
from agent.lockdown import embedded_broker
from agent.node import run_node

pytestmark = [pytest.mark.broker, pytest.mark.timeout(90)]


@pytest.mark.parametrize("kind", ["nats", "mqtt"])
async def test_a_fleet_process_of_five_trainers_trains_a_secure_round(
    kind: BrokerKind, tmp_path: Path
) -> None:
    options = DemoOptions(agents=5, rounds=1, bus=kind, report_dir=tmp_path / "report")
    agent_ids = [f"agent-{i:02d}" for i in range(options.agents)]
    pki = create_pki(tmp_path / "pki", FEDERATION)
    with embedded_broker(lock_down(pki, kind, agent_ids)) as broker:
        paths = await enroll_agents(
            pki,
            url=broker.url,
            federation=FEDERATION,
            work=tmp_path / "agents",
            plugin=options.plugin,
            options={a: plugin_options(options, i, 5, "iid") for i, a in enumerate(agent_ids)},
        )
        configs = [enrolled_config(options, paths[a]) for a in agent_ids]
        assert len({c.identity.key_file for c in configs}) == 5  # a key of its own each
        fleet = Fleet(configs)
        async with asyncio.TaskGroup() as tg:
            members = tg.create_task(fleet.run())
            summary = await run_node(aggregator_config(options, broker.url, pki))
            members.cancel()
    assert fleet.failed == {}
    assert summary is not None
    [record] = summary.rounds
    assert sorted(record.survivors) == agent_ids
    assert record.accuracy is not None


async def test_twenty_devices_enroll_at_once_and_only_bad_tokens_are_refused(
    tmp_path: Path,
) -> None:
    agent_ids = [f"d{i:02d}" for i in range(20)]
    pki = create_pki(tmp_path / "pki", "demo")
    with (
        embedded_broker(lock_down(pki, "nats", agent_ids)) as broker,
        Registry.open(pki.registry) as registry,
    ):
        tokens = {a: registry.create_token(a, ttl_seconds=600) for a in agent_ids}
        tokens["d03"] = "not-a-token"
        registry.redeem_token(tokens["d07"], "d07")  # used up before the device tries
        devices = fleet_devices(
            pki,
            tokens,
            url=broker.url,
            work=tmp_path / "devices",
            plugin="digits-mlp",
            options={a: {"agent_index": i, "num_agents": 20} for i, a in enumerate(agent_ids)},
        )
        tls = tls_files(pki, ENROLL_ID, broker.url)
        async with enrollment_service(pki, registry, url=broker.url, federation="demo") as service:
            result = await enroll_fleet(
                devices,
                federation="demo",
                ca_fingerprint=pki.ca.fingerprint,
                tls_cert=tls.cert_file,
                tls_key=tls.key_file,
                timeout=30,
                concurrency=20,
            )
    assert {a: e.reason for a, e in result.failed.items() if isinstance(e, IdentityError)} == {
        "d03": "bad_token",
        "d07": "used_token",
    }
    assert sorted(result.installed) == sorted(set(agent_ids) - {"d03", "d07"})
    assert sum(service._batcher.batches) == 20  # every request went through a batch
    for agent_id, installed in result.installed.items():
        config = AgentConfig.load(installed.config_path)
        assert (config.agent_id, config.identity.enabled) == (agent_id, True)
        assert installed.identity.agent_id == agent_id
    assert not (tmp_path / "devices" / "d03.toml").exists()


def test_a_fleet_is_spread_evenly_over_processes() -> None:
    assert spread(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert spread([1, 2], 5) == [[1], [2]]
