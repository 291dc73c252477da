"""``fedbus status --peers`` (``agent.roles.peer.view``) against peers over a real broker:
every peer's version and its distance from the mean, from the peers' retained statuses."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from agent.brokers import EmbeddedBroker
from agent.bus.url import bus_from_url
from agent.node import bus_settings
from agent.plugin.loader import CheckedPlugin
from agent.roles.peer import Peer
from agent.roles.peer.sketch import distances, sketch
from tests.helpers import GossipPlugin, fedbus, peer_config

IDS = [f"s{i}" for i in range(4)]


@pytest.mark.broker
@pytest.mark.timeout(60)
def test_status_peers_shows_each_peers_version_and_distance_from_the_mean(
    mosquitto: EmbeddedBroker, tmp_path: Path
) -> None:
    """Four peers take 2 training steps and one consensus step (no fit) and stop; ``fedbus
    status --peers`` (plain and ``--json``)
    lists each one with its version (3) and a distance from the mean that matches the
    sketches of the models the peers hold (the models differ: two steps of gossip on a ring
    do not reach the mean)."""
    url = mosquitto.url
    configs = {
        a: peer_config(a, url, tmp_path, IDS, degree=2, steps=2, consensus_steps=1, wait=2.0)
        for a in IDS
    }
    gossip = {a: GossipPlugin(float(4 * i)) for i, a in enumerate(IDS)}
    plugins = {a: CheckedPlugin("gossip", g) for a, g in gossip.items()}

    async def main() -> dict[str, Peer]:
        peers, tasks, buses = {}, [], []
        for agent_id, config in configs.items():
            bus = bus_from_url(url, bus_settings(config))
            await bus.__aenter__()
            buses.append(bus)
            peers[agent_id] = Peer(config=config, bus=bus, plugin=plugins[agent_id])
            tasks.append(asyncio.create_task(peers[agent_id].run()))
        try:
            async with asyncio.timeout(30):
                while not all(p.done for p in peers.values()):
                    await asyncio.sleep(0.05)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for bus in buses:
                await bus.__aexit__(None, None, None)
        return peers

    peers = asyncio.run(main())
    assert [g.fits for g in gossip.values()] == [2] * len(IDS)
    expected = distances({a: sketch(p.weights) for a, p in peers.items()})
    assert max(expected.values()) > 0.01  # not yet at consensus: the distances say something
    path = tmp_path / "s0.toml"
    path.write_bytes(configs["s0"].to_toml())

    shown = fedbus("status", "--peers", "--config", str(path), "--timeout", "2")
    assert shown.returncode == 0, shown.stderr
    lines = {line.split()[0]: line.split() for line in shown.stdout.splitlines()[2:-1]}
    assert set(lines) == set(IDS)
    for agent_id, words in lines.items():
        assert words[2] == "3"  # version
        assert float(words[4]) == pytest.approx(expected[agent_id], abs=1e-4)

    as_json = fedbus("status", "--peers", "--json", "--config", str(path), "--timeout", "2")
    assert as_json.returncode == 0, as_json.stderr
    found = json.loads(as_json.stdout)
    assert {a: s["model_version"] for a, s in found.items()} == dict.fromkeys(IDS, 3)
    for agent_id, status in found.items():
        assert np.allclose(status["sketch"], sketch(peers[agent_id].weights))
