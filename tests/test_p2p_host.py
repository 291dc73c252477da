"""The aggregator host of a P2P federation (``[aggregator] mode = "p2p"``, ARCHITECTURE.md
§14) over real brokers: it trains nothing and runs only the CA (enrollment, CRL, callout) and
the revocation announcement. A device enrolls while the gossip runs and joins it; a revoked
peer's models are refused by its neighbours (``agent.roles.peer.revocation``); the gossip
goes on while the host restarts, and a revocation made meanwhile reaches the peers after."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from cryptography import x509
from structlog.testing import capture_logs

from agent.brokers import EmbeddedBroker
from agent.bus.url import bus_from_url
from agent.config import AgentConfig, AggregatorConfig, PluginConfig, TrainingMode
from agent.errors import AgentRevokedError
from agent.identity import pem
from agent.identity.ca_dir import AGGREGATOR_CERT, AGGREGATOR_KEY, CA_CERT, init_ca_dir
from agent.identity.certificates import identity_of
from agent.identity.device import enroll
from agent.identity.registry import REGISTRY_FILE, Registry
from agent.identity_settings import IdentityConfig
from agent.node import bus_settings, run_node
from agent.plugin.api import FitResult, Scalar, Weights
from agent.plugin.loader import CheckedPlugin
from agent.role import Role
from agent.roles.peer import Peer
from agent.roles.peer.role import graph_neighbours
from tests.helpers import GossipPlugin, identity_files, peer_config, toy

IDS = [f"h{i}" for i in range(6)]
NEW, REVOKED = "h5", "h2"
OTHERS = [a for a in IDS if a != REVOKED]


class PacedGossip(GossipPlugin):
    """``GossipPlugin`` whose fit takes 20 ms (a few dozen steps a second, not thousands)."""

    def fit(self, weights: Weights, config: Mapping[str, Scalar]) -> FitResult:
        time.sleep(0.02)
        return super().fit(weights, config)


def _host(url: str, tmp_path: Path, ca_dir: Path) -> AgentConfig:
    return AgentConfig(
        role=Role.AGGREGATOR,
        agent_id="aggregator",
        federation="fed",
        bus_url=url,
        state_dir=tmp_path / "host",
        plugin=PluginConfig(name="toy"),
        aggregator=AggregatorConfig(mode=TrainingMode.P2P),
        identity=IdentityConfig(
            ca_dir=ca_dir,
            cert_file=ca_dir / AGGREGATOR_CERT,
            key_file=ca_dir / AGGREGATOR_KEY,
            ca_file=ca_dir / CA_CERT,
        ),
    )


class Fleet:
    """The host's CA, its registry, and peers started on demand in this event loop."""

    def __init__(self, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        # the host loads its plugin only for the initial weights it never trains
        monkeypatch.setattr("agent.node.load_plugin", lambda name, context: toy(0.0, 1))
        self.url, self.tmp = url, tmp_path
        self.ca_dir = tmp_path / "ca"
        self.authority = init_ca_dir(self.ca_dir, "fed", aggregator_id="aggregator")
        self.registry = Registry.open(self.ca_dir / REGISTRY_FILE)
        self.peers: dict[str, Peer] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.buses: list[Any] = []

    def config(self, agent_id: str, ids: IdentityConfig) -> AgentConfig:
        plain = peer_config(agent_id, self.url, self.tmp, IDS, degree=3, wait=1.0, eval_every=0)
        return msgspec.structs.replace(plain, identity=ids)

    def enrolled_offline(self, agent_id: str) -> AgentConfig:
        """A peer enrolled before the run (its certificate recorded in the registry)."""
        ids = identity_files(self.authority, agent_id, Role.TRAINER, self.tmp / "pki")
        assert ids.cert_file is not None
        cert = x509.load_pem_x509_certificate(ids.cert_file.read_bytes())
        self.registry.record_enrollment(identity_of(cert), cert)
        return self.config(agent_id, ids)

    async def enrolled_online(self, agent_id: str) -> AgentConfig:
        """A new device enrolled over the bus by the running host, with a one-time token."""
        token = self.registry.create_token(agent_id, 60)
        got = await enroll(
            self.url,
            federation="fed",
            agent_id=agent_id,
            token=token,
            ca_fingerprint=self.authority.fingerprint,
            timeout=10,
        )
        where = self.tmp / "device"
        pem.write_private_key(where / f"{agent_id}.key", got.key)
        pem.write_pem(where / f"{agent_id}.pem", got.cert)
        pem.write_pem(where / "ca.pem", got.ca_cert)
        ids = IdentityConfig(
            cert_file=where / f"{agent_id}.pem",
            key_file=where / f"{agent_id}.key",
            ca_file=where / "ca.pem",
        )
        return self.config(agent_id, ids)

    async def start(self, config: AgentConfig) -> None:
        bus = bus_from_url(self.url, bus_settings(config))
        await bus.__aenter__()
        self.buses.append(bus)
        index = IDS.index(config.agent_id)
        peer = Peer(config=config, bus=bus, plugin=CheckedPlugin("gossip", PacedGossip(index)))
        self.peers[config.agent_id] = peer
        self.tasks[config.agent_id] = asyncio.create_task(peer.run())
        await peer.ready.wait()

    async def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        for bus in self.buses:
            await bus.__aexit__(None, None, None)
        self.registry.close()

    def versions(self) -> dict[str, int]:
        return {a: p.version for a, p in self.peers.items()}


async def _until(check: Callable[[], bool], seconds: float) -> None:
    async with asyncio.timeout(seconds):
        while not check():
            await asyncio.sleep(0.05)


def _graph() -> dict[str, frozenset[str]]:
    return {a: graph_neighbours(peer_config(a, "memory://", Path("/"), IDS, degree=3)) for a in IDS}


def _mixed_after_revocation(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The mixes of the revoked peer after its last neighbour dropped it (a mix follows
    its collect with no await between: a revocation seen before it is always honoured)."""
    revoked_at = max(
        i
        for i, e in enumerate(logs)
        if e["event"] == "neighbour_revoked" and e["neighbour"] == REVOKED
    )
    return [e for e in logs[revoked_at:] if e["event"] == "p2p_mixed" and REVOKED in e["mixed"]]


@pytest.mark.broker
@pytest.mark.timeout(60)
def test_the_host_enrolls_a_device_into_the_gossip_and_its_peers_refuse_a_revoked_one(
    mosquitto: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five enrolled peers gossip with the host up (no aggregator in the loop); a sixth
    device enrolls over the bus meanwhile, starts, and its neighbours mix its models. Then
    one peer is revoked in the registry: the host announces the CRL, the revoked peer stops
    (``AgentRevokedError``), every neighbour drops it (``neighbour_revoked``) and never mixes
    it again, and what it still signs is refused (``message_dropped`` reason ``revoked``: the
    open test broker still carries it), while the other peers keep agreeing."""
    fleet = Fleet(mosquitto.url, tmp_path, monkeypatch)
    graph = _graph()

    async def main() -> None:
        host = asyncio.create_task(run_node(_host(fleet.url, tmp_path, fleet.ca_dir)))
        try:
            for agent_id in IDS[:-1]:
                await fleet.start(fleet.enrolled_offline(agent_id))
            await _until(lambda: min(fleet.versions().values()) >= 2, 20)
            await fleet.start(await fleet.enrolled_online(NEW))
            joined = fleet.peers[NEW].version
            await _until(lambda: fleet.peers[NEW].version >= joined + 3, 20)
            fleet.registry.revoke(REVOKED)
            await _until(
                lambda: all(fleet.peers[a].book.revoked(REVOKED) for a in graph[REVOKED]), 15
            )
            await _until(fleet.tasks[REVOKED].done, 10)  # told it is revoked, it stops
            assert isinstance(fleet.tasks[REVOKED].exception(), AgentRevokedError)
            for agent_id in graph[REVOKED]:  # a revoked device that does not stop: refused
                await fleet.peers[REVOKED]._hello(agent_id)
            after = fleet.versions()
            await _until(lambda: all(fleet.peers[a].version >= after[a] + 5 for a in OTHERS), 20)
        finally:
            await fleet.close()
            host.cancel()
            await asyncio.gather(host, return_exceptions=True)

    with capture_logs() as logs:
        asyncio.run(main())
    mixed_new = [e for e in logs if e["event"] == "p2p_mixed" and NEW in e["mixed"]]
    assert mixed_new  # the enrolled device joined the gossip
    assert not _mixed_after_revocation(logs)
    dropped = [e for e in logs if e["event"] == "message_dropped"]
    assert dropped
    assert {e["reason"] for e in dropped} == {"revoked"}
    assert all(e["topic"].endswith(f"/{REVOKED}") for e in dropped)
    values = [float(np.mean(fleet.peers[a].weights[0])) for a in OTHERS]
    assert max(values) - min(values) < 0.5


@pytest.mark.broker
@pytest.mark.timeout(60)
def test_the_gossip_goes_on_while_the_host_restarts(
    nats_server: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six peers gossip over NATS; the host is stopped, and the peers go on taking steps
    without it. A peer revoked while the host is down is announced by the restarted host
    (NATS retains nothing: it sends at start), and its neighbours drop it."""
    fleet = Fleet(nats_server.url, tmp_path, monkeypatch)
    graph = _graph()
    config = _host(fleet.url, tmp_path, fleet.ca_dir)

    async def main() -> None:
        host = asyncio.create_task(run_node(config))
        try:
            for agent_id in IDS:
                await fleet.start(fleet.enrolled_offline(agent_id))
            await _until(lambda: min(fleet.versions().values()) >= 3, 20)
            host.cancel()
            await asyncio.gather(host, return_exceptions=True)
            down = fleet.versions()
            await _until(lambda: all(fleet.peers[a].version >= down[a] + 5 for a in IDS), 20)
            fleet.registry.revoke(REVOKED)
            host = asyncio.create_task(run_node(config))
            await _until(
                lambda: all(fleet.peers[a].book.revoked(REVOKED) for a in graph[REVOKED]), 15
            )
            await _until(fleet.tasks[REVOKED].done, 10)
            after = fleet.versions()
            await _until(lambda: all(fleet.peers[a].version >= after[a] + 3 for a in OTHERS), 20)
        finally:
            await fleet.close()
            host.cancel()
            await asyncio.gather(host, return_exceptions=True)

    with capture_logs() as logs:
        asyncio.run(main())
    assert not _mixed_after_revocation(logs)
    values = [float(np.mean(fleet.peers[a].weights[0])) for a in OTHERS]
    assert max(values) - min(values) < 0.5
