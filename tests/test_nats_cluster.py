"""A locked-down 3-node nats-server cluster and a leaf-node site (``agent.lockdown.topology``):
agents spread over the nodes keep a SecAgg+ round going when the node holding a third of them
is SIGKILLed mid-round, and agents at a site's leaf node join a federation on the hub."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from structlog.testing import capture_logs

from agent.brokers import HOST, EmbeddedBroker, free_port
from agent.bus.url import TlsFiles, bus_from_url
from agent.config import AgentConfig, SecureAggregation
from agent.identity import ca
from agent.lockdown import Members, embedded_broker
from agent.lockdown.files import BrokerFiles
from agent.lockdown.nats_cluster import ClusterNode
from agent.lockdown.topology import write_cluster, write_leaf
from agent.node import bus_settings
from agent.plugin.loader import CheckedPlugin
from agent.role import Role
from agent.roles.aggregator import Aggregator
from agent.roles.aggregator.records import RunSummary
from agent.roles.trainer import Trainer
from tests.helpers import ToyPlugin, aggregator_config, identity_files, trainer_config

pytestmark = [pytest.mark.broker, pytest.mark.timeout(90)]

TRAINERS = [f"t{i}" for i in range(6)]
SITE = "site-a"
WAIT = 15.0  # bound for what should happen promptly; never asserted as a duration


@dataclass
class Cluster:
    authority: ca.CertificateAuthority
    members: Members
    nodes: list[ClusterNode]
    brokers: list[EmbeddedBroker]

    def url(self, first: int) -> str:
        """Every node's client URL, node ``first`` first."""
        urls = [node.client_url for node in self.nodes]
        return ",".join(urls[first:] + urls[:first])


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Three nodes on loopback ports picked free here, routes between them, a leaf-node
    listener for ``SITE``; every node stopped (and reaped) afterwards."""
    authority = ca.init_ca("fed")
    members = Members("aggregator", tuple(TRAINERS))
    nodes = [ClusterNode(f"n{i}", HOST, free_port(), free_port(), free_port()) for i in range(3)]
    files = write_cluster(authority, tmp_path / "core", members, nodes, sites=[SITE])
    with contextlib.ExitStack() as stack:
        brokers = [stack.enter_context(embedded_broker(f)) for f in files]
        yield Cluster(authority, members, nodes, brokers)


def _configs(
    cluster: Cluster, tmp_path: Path, urls: Mapping[str, str], **schedule: Any
) -> tuple[AgentConfig, dict[str, AgentConfig], dict[str, TlsFiles]]:
    pki = tmp_path / "pki"
    agg_identity = identity_files(cluster.authority, "aggregator", Role.AGGREGATOR, pki)
    agg = aggregator_config(urls["aggregator"], tmp_path, agents=len(urls) - 1)
    agg = msgspec.structs.replace(
        agg, identity=agg_identity, aggregator=msgspec.structs.replace(agg.aggregator, **schedule)
    )
    configs = {"aggregator": agg}
    for agent_id, url in urls.items():
        if agent_id != "aggregator":
            identity = identity_files(cluster.authority, agent_id, Role.TRAINER, pki)
            configs[agent_id] = msgspec.structs.replace(
                trainer_config(agent_id, url, tmp_path), identity=identity
            )
    tls = {
        name: TlsFiles(c.identity.ca_file, c.identity.cert_file, c.identity.key_file)
        for name, c in configs.items()
    }
    return configs.pop("aggregator"), configs, tls


async def _federate(
    config: AgentConfig,
    trainers: Mapping[str, AgentConfig],
    tls: Mapping[str, TlsFiles],
    plugins: Mapping[str, CheckedPlugin],
) -> tuple[RunSummary, dict[str, Any]]:
    """Run the aggregator and one in-process trainer per config, each on its own TLS
    connection to its own bus_url, until the schedule ends; returns the trainers' buses."""
    buses: dict[str, Any] = {}
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = []
            for agent_id, tconfig in trainers.items():
                bus = bus_from_url(tconfig.bus_url, bus_settings(tconfig), tls=tls[agent_id])
                buses[agent_id] = await bus.__aenter__()
                trainer = Trainer(config=tconfig, bus=bus, plugin=plugins[agent_id])
                tasks.append(tg.create_task(trainer.run()))
            settings = bus_settings(config)
            async with bus_from_url(config.bus_url, settings, tls=tls["aggregator"]) as agg_bus:
                summary = await Aggregator(
                    config=config,
                    bus=agg_bus,
                    plugin_name="toy",
                    initial_weights=next(iter(plugins.values())).get_weights(),
                ).run()
            await asyncio.sleep(0.05)  # let finish reach the trainers
            for task in tasks:
                task.cancel()
    finally:
        for bus in buses.values():
            await bus.__aexit__(None, None, None)
    return summary, buses


async def test_a_secagg_round_survives_the_death_of_a_node(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Six trainers, two per node, the aggregator on n0; in round 1, as the advertised keys
    are relayed and while the plugins train, n2 is SIGKILLed. Its two trainers reconnect to
    another node (their bus_url lists all three) and rejoin, the aggregator sends their inbox
    again, and the round ends with all six survivors, as does round 2."""
    home = {agent_id: i % 3 for i, agent_id in enumerate(TRAINERS)}
    urls = {"aggregator": cluster.url(0)} | {a: cluster.url(n) for a, n in home.items()}
    config, trainers, tls = _configs(
        cluster,
        tmp_path,
        urls,
        rounds=2,
        round_timeout=20.0,
        min_fit_clients=len(TRAINERS),
        secure_aggregation=SecureAggregation.SECAGG_PLUS,
    )
    training = threading.Event()  # the plugins' fits wait for it
    plugins = {
        a: CheckedPlugin("toy", ToyPlugin(float(i + 1), 1, block=training))
        for i, a in enumerate(TRAINERS)
    }
    moved = [a for a, n in home.items() if n == 2]
    # Six fits block in worker threads: keep threads free for the SecAgg+ crypto meanwhile.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=16))

    async def kill_mid_round(logs: list[dict[str, Any]]) -> None:
        def relaying() -> bool:
            return any(
                e["event"] == "secagg_stage_closed" and e.get("stage") == "advertise_keys"
                for e in logs
            )

        while not relaying():  # the keys are being relayed: some never reach n2's trainers
            await asyncio.sleep(0.005)
        victim = cluster.brokers[2]
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        victim.stop()  # reaps it
        while sum(
            e["event"] == "agent_admitted" and e.get("rejoin") and e.get("agent") in moved
            for e in logs
        ) < len(moved):
            await asyncio.sleep(0.01)
        training.set()

    with capture_logs() as logs:
        async with asyncio.timeout(60):
            killer = asyncio.create_task(kill_mid_round(logs))
            try:
                summary, _ = await _federate(config, trainers, tls, plugins)
            finally:
                training.set()
                killer.cancel()
    assert killer.done()
    assert not killer.cancelled(), "the node was never killed"
    first, second = summary.rounds
    assert first.survivors == TRAINERS
    assert first.dropouts == []
    assert first.model_version == 1
    assert second.survivors == TRAINERS
    reconnected = {
        e["client_id"].removeprefix("fed-")
        for e in logs
        if e["event"] == "bus_connected" and e.get("reconnect")
    }
    assert reconnected == set(moved)  # only the dead node's trainers had to move
    assert {e["agent"] for e in logs if e["event"] == "inbox_resent"} == set(moved)
    events = [e["event"] for e in logs]
    assert events.index("bus_disconnected") < events.index("round_finished")  # mid-round 1


async def test_agents_at_a_leaf_node_join_a_federation_on_the_hub(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A site's leaf node (its own server, locked down for the same members, linked to
    every core node's leaf port): two trainers connected to it and one on n1 train two
    SecAgg+ rounds with the aggregator on n0."""
    leaf_files: BrokerFiles = write_leaf(
        cluster.authority,
        tmp_path / "leaf",
        cluster.members,
        SITE,
        hub=[node.leaf_url for node in cluster.nodes],
        port=free_port(),
    )
    with embedded_broker(leaf_files) as leaf:
        at_site = ["t3", "t4"]
        urls = {"aggregator": cluster.url(0), "t1": cluster.url(1)}
        urls |= {agent_id: leaf.url for agent_id in at_site}
        config, trainers, tls = _configs(
            cluster,
            tmp_path,
            urls,
            rounds=2,
            min_fit_clients=3,
            secure_aggregation=SecureAggregation.SECAGG_PLUS,
        )
        plugins = {
            a: CheckedPlugin("toy", ToyPlugin(float(i + 1), 1)) for i, a in enumerate(trainers)
        }
        summary, _ = await _federate(config, trainers, tls, plugins)
    assert [r.survivors for r in summary.rounds] == [["t1", "t3", "t4"]] * 2
    assert summary.rounds[-1].loss == pytest.approx(2.0, abs=1e-3)
