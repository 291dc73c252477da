"""A locked-down 3-node nats-server cluster and a leaf-node site (``agent.lockdown.topology``):
agents spread over the nodes keep a SecAgg+ round going when the node holding a third of them
is SIGKILLed mid-round, and agents at a site's leaf node join a federation on the hub."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from structlog.testing import capture_logs

from agent.brokers import HOST, EmbeddedBroker, free_port
from agent.bus.base import BusSettings
from agent.bus.url import TlsFiles, bus_from_url
from agent.config import AgentConfig, SecureAggregation
from agent.errors import BusTimeoutError
from agent.identity import ca
from agent.identity.ca_dir import init_ca_dir
from agent.identity.certificates import identity_of
from agent.identity.pem import load_certificate
from agent.identity.registry import Registry
from agent.lockdown import Members, embedded_broker
from agent.lockdown.files import BrokerFiles
from agent.lockdown.nats_cluster import ClusterNode
from agent.lockdown.nats_jwt import CALLOUT_SEED, load_or_create_issuer, public_key
from agent.lockdown.topology import write_cluster, write_leaf
from agent.node import bus_settings
from agent.plugin.loader import CheckedPlugin
from agent.role import Role
from agent.roles.aggregator import Aggregator
from agent.roles.aggregator.records import RunSummary
from agent.roles.trainer import Trainer
from agent.runtime.auth_callout import CalloutAuthority, serve_callout
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


@contextlib.contextmanager
def running_cluster(
    authority: ca.CertificateAuthority,
    members: Members,
    where: Path,
    *,
    callout_issuer: str | None = None,
) -> Iterator[Cluster]:
    """Three nodes on loopback ports picked free here, routes between them, a leaf-node
    listener for ``SITE``; every node stopped (and reaped) afterwards."""
    nodes = [ClusterNode(f"n{i}", HOST, free_port(), free_port(), free_port()) for i in range(3)]
    files = write_cluster(
        authority, where, members, nodes, sites=[SITE], callout_issuer=callout_issuer
    )
    with contextlib.ExitStack() as stack:
        brokers = [stack.enter_context(embedded_broker(f)) for f in files]
        yield Cluster(authority, members, nodes, brokers)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A running 3-node cluster (``running_cluster``) admitting ``TRAINERS``."""
    members = Members("aggregator", tuple(TRAINERS))
    with running_cluster(ca.init_ca("fed"), members, tmp_path / "core") as started:
        yield started


#: Each trainer's home node: the six spread over the three nodes, two on each.
HOME = {agent_id: i % 3 for i, agent_id in enumerate(TRAINERS)}


def spread_urls(cluster: Cluster) -> dict[str, str]:
    """The aggregator on node 0, each trainer on its ``HOME`` node."""
    return {"aggregator": cluster.url(0)} | {a: cluster.url(n) for a, n in HOME.items()}


def cluster_configs(
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


async def federate_on_cluster(
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
    home = HOME
    config, trainers, tls = cluster_configs(
        cluster,
        tmp_path,
        spread_urls(cluster),
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
                summary, _ = await federate_on_cluster(config, trainers, tls, plugins)
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
        config, trainers, tls = cluster_configs(
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
        summary, _ = await federate_on_cluster(config, trainers, tls, plugins)
    assert [r.survivors for r in summary.rounds] == [["t1", "t3", "t4"]] * 2
    assert summary.rounds[-1].loss == pytest.approx(2.0, abs=1e-3)


def test_a_trainer_certificate_opens_no_route_and_an_unlisted_site_no_leaf(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A server dialling n0's route port with a trainer's certificate, and one dialling its
    leaf port with the certificate of a site the cluster does not list, are refused."""
    where = tmp_path / "rogue"
    identity_files(cluster.authority, "t0", Role.TRAINER, where)
    identity_files(cluster.authority, "site-b", Role.BROKER, where)

    def tls(name: str) -> str:
        return (
            f'tls {{ cert_file: "{where}/{name}.pem", key_file: "{where}/{name}.key", '
            f'ca_file: "{where}/ca.pem" }}'
        )

    node = cluster.nodes[0]
    blocks = {
        "route": f'cluster {{ name: "fedbus-fed", port: {free_port()}, '
        f'routes = ["{node.route_url}"]\n {tls("t0")} }}',
        "leaf": f'leafnodes {{ remotes = [ {{ urls: ["{node.leaf_url}"], {tls("site-b")} }} ] }}',
    }
    for name, block in blocks.items():
        port = free_port()
        conf = where / f"{name}.conf"
        conf.write_text(f'host: "{HOST}"\nport: {port}\n{block}\n', encoding="utf-8")
        with EmbeddedBroker("nats", port=port, config_file=conf) as rogue:
            deadline = time.monotonic() + WAIT
            while not (seen := _refused_links(rogue.log_tail(10_000))):
                assert time.monotonic() < deadline, rogue.log_tail(50)
                time.sleep(0.05)
            created, refused = seen
            assert created == refused, rogue.log_tail(50)


def _refused_links(log: str) -> tuple[set[str], set[str]] | None:
    """From a dialling server's log: the route/leaf connections it created and those the
    node refused ('Authorization Violation', then closed), once at least one was refused and
    every one created so far is closed; None before. The dialler retries (and opens several
    route connections at once), so a new connection may be created after the first refusal."""
    created: set[str] = set()
    closed: set[str] = set()
    refused: set[str] = set()
    for line in log.splitlines():
        match = re.search(r" - ([rl]id:\d+) - ", line)
        if match is None:
            continue
        link = match.group(1)
        if "connection created" in line:
            created.add(link)
        elif "connection closed" in line:
            closed.add(link)
        elif "Authorization Violation" in line:
            refused.add(link)
    if not refused or not created <= closed:
        return None
    return created, refused


async def test_the_auth_callout_admits_agents_on_every_node(tmp_path: Path) -> None:
    """Under ``--auth-callout`` the aggregator, on n0, serves the callout for the cluster: an
    enrolled trainer dialling n2 is admitted (the request and its answer crossed the
    routes), a certificate the registry does not know is refused on n1."""
    ca_dir = tmp_path / "ca"
    authority = init_ca_dir(ca_dir, "fed", aggregator_id="aggregator")
    registry = Registry.open(ca_dir / "registry.sqlite")
    issuer = load_or_create_issuer(ca_dir / CALLOUT_SEED)
    pki = tmp_path / "pki"
    enrolled = identity_files(authority, "t1", Role.TRAINER, pki)
    registry.record_enrollment(
        identity_of(load_certificate(enrolled.cert_file)), load_certificate(enrolled.cert_file)
    )
    unknown = identity_files(authority, "t2", Role.TRAINER, pki)
    agg = TlsFiles(pki / "ca.pem", ca_dir / "aggregator.pem", ca_dir / "aggregator.key")
    callout = CalloutAuthority(authority.cert, registry, issuer, ttl=3600)
    members = Members("aggregator")
    with running_cluster(
        authority, members, tmp_path / "core", callout_issuer=public_key(issuer)
    ) as started:
        ready = asyncio.Event()
        service = asyncio.create_task(
            serve_callout(callout, started.url(0), tls=agg.ssl_context(), ready=ready)
        )
        try:
            await asyncio.wait_for(ready.wait(), WAIT)

            async def connects(url: str, files: Any, within: float) -> bool:
                tls = TlsFiles(files.ca_file, files.cert_file, files.key_file)
                async with bus_from_url(url, BusSettings("probe"), tls=tls) as bus:
                    try:
                        await bus.wait_connected(timeout=within)
                    except BusTimeoutError:
                        return False
                return True

            assert await connects(started.nodes[2].client_url, enrolled, WAIT)
            assert not await connects(started.nodes[1].client_url, unknown, 2.0)
        finally:
            service.cancel()
            await asyncio.gather(service, return_exceptions=True)
            registry.close()
