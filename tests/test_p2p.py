"""Serverless P2P averaging (``agent.roles.peer``, ARCHITECTURE.md §14): the mixing step,
the sketch, the graph, and peers over real brokers (identities on: every model signed and
sealed to its recipient), through a killed and a restarted neighbour."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from structlog.testing import capture_logs

from agent.brokers import EmbeddedBroker
from agent.bus.url import bus_from_url
from agent.errors import ConfigError
from agent.identity import ca
from agent.lockdown.access import trainer_rules
from agent.messages import topics
from agent.messages.peer_bodies import PeerHello, PeerModel, Revocations
from agent.messages.tensors import to_tensors
from agent.node import bus_settings
from agent.plugin.loader import CheckedPlugin
from agent.role import Identity, Role
from agent.roles.peer import Peer
from agent.roles.peer.book import NeighbourBook
from agent.roles.peer.mixing import Neighbour, mix
from agent.roles.peer.revocation import BadRevocationsError, PeerRevocations
from agent.roles.peer.role import graph_neighbours
from agent.roles.peer.sketch import distances, sketch
from tests.helpers import GossipPlugin, identity_files, peer_config

IDS = [f"p{i}" for i in range(6)]


def test_metropolis_mix_keeps_the_sum_and_integer_arrays() -> None:
    """On a 2-regular triangle each weight is 1/3: one mix of all three is the mean; an
    integer array is kept; a missing neighbour's weight stays with the peer."""
    own = [np.array([3.0]), np.array([7], np.int64)]
    others = {
        "b": Neighbour([np.array([6.0]), np.array([1])], 2),
        "c": Neighbour([np.array([0.0]), np.array([1])], 2),
    }
    mixed = mix(own, 2, others)
    assert mixed[0][0] == pytest.approx(3.0)
    assert mixed[1][0] == 7
    assert mix(own, 2, {"b": others["b"]})[0][0] == pytest.approx(2 / 3 * 3 + 6 / 3)


def test_sketch_distance_is_linear_and_close_to_the_true_distance() -> None:
    """The sketch is linear (the mean's sketch is the mean sketch) and its distance from the
    mean estimates the true L2 distance within the JL error."""
    rng = np.random.default_rng(1)
    models = {a: [rng.normal(size=(64, 64)), rng.normal(size=64)] for a in IDS}
    mean = [np.mean([m[i] for m in models.values()], axis=0) for i in range(2)]
    sketches = {a: sketch(m) for a, m in models.items()}
    assert np.allclose(np.mean(list(sketches.values()), axis=0), sketch(mean))
    for agent_id, gap in distances(sketches).items():
        true = np.sqrt(
            sum(np.sum((x - y) ** 2) for x, y in zip(models[agent_id], mean, strict=True))
        )
        assert 0.3 * true < gap < 1.7 * true


def test_graph_is_the_secagg_graph_and_bad_configs_are_refused(tmp_path: Path) -> None:
    neighbours = {
        a: graph_neighbours(peer_config(a, "memory://", tmp_path, IDS, degree=3)) for a in IDS
    }
    assert all(len(n) == 3 for n in neighbours.values())
    assert all(a in neighbours[b] for a in IDS for b in neighbours[a])  # symmetric
    with pytest.raises(ConfigError, match="degree"):
        graph_neighbours(peer_config("p0", "memory://", tmp_path, IDS[:5], degree=3))
    with pytest.raises(ConfigError, match="peers"):
        graph_neighbours(peer_config("x", "memory://", tmp_path, IDS))


def test_peer_topic_and_acl() -> None:
    """A peer writes to any neighbour as itself and reads only what is addressed to it."""
    topic = topics.PEER.format("fed", "p1", peer="p2")
    assert topic == "fl/fed/peer/p2/p1"
    assert topics.classify(topic, "fed") == (topics.PEER, "p1")
    filters = {(str(r.access), r.filter("fed", "%u")) for r in trainer_rules()}
    assert ("write", "fl/fed/peer/+/%u") in filters
    assert ("read", "fl/fed/peer/%u/+") in filters


async def _peers(
    url: str, tmp_path: Path, configs: dict[str, Any], plugins: dict[str, CheckedPlugin]
) -> tuple[dict[str, Peer], dict[str, asyncio.Task[None]], list[Any]]:
    peers: dict[str, Peer] = {}
    tasks: dict[str, asyncio.Task[None]] = {}
    buses: list[Any] = []
    for agent_id, config in configs.items():
        bus = bus_from_url(url, bus_settings(config))
        await bus.__aenter__()
        buses.append(bus)
        peers[agent_id] = Peer(config=config, bus=bus, plugin=plugins[agent_id])
        tasks[agent_id] = asyncio.create_task(peers[agent_id].run())
    return peers, tasks, buses


def _configs(url: str, tmp_path: Path, **p2p: Any) -> dict[str, Any]:
    authority = ca.init_ca("fed")
    out = {}
    for a in IDS:
        config = peer_config(a, url, tmp_path, IDS, degree=3, **p2p)
        ids = identity_files(authority, a, Role.TRAINER, tmp_path / "pki")
        out[a] = msgspec.structs.replace(config, identity=ids)
    return out


async def _until(check: Any, seconds: float) -> None:
    async with asyncio.timeout(seconds):
        while not check():
            await asyncio.sleep(0.05)


@pytest.mark.broker
@pytest.mark.timeout(60)
def test_peers_converge_and_skip_a_killed_neighbour(broker: EmbeddedBroker, tmp_path: Path) -> None:
    """Six signed-and-sealing peers on a 3-regular graph gossip to the mean of their starting
    values; one killed after 3 steps is skipped (logged) and the other five go on and agree."""
    configs = _configs(broker.url, tmp_path, steps=12, wait=1.0, eval_every=0)
    plugins = {a: CheckedPlugin("gossip", GossipPlugin(float(i))) for i, a in enumerate(IDS)}

    async def main() -> None:
        peers, tasks, buses = await _peers(broker.url, tmp_path, configs, plugins)
        try:
            await _until(lambda: peers["p5"].version >= 3, 20)
            tasks["p5"].cancel()
            await _until(lambda: all(peers[a].version >= 12 for a in IDS[:5]), 30)
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            for bus in buses:
                await bus.__aexit__(None, None, None)
        values = [float(np.mean(peers[a].weights[0])) for a in IDS[:5]]
        assert max(values) - min(values) < 0.2  # consensus
        assert abs(np.mean(values) - 2.5) < 0.6  # near the mean of 0..5 (p5 left with its own)
        gaps = distances({a: sketch(peers[a].weights) for a in IDS[:5]})
        assert max(gaps.values()) < 0.5

    with capture_logs() as logs:
        asyncio.run(main())
    # p5 is skipped from its death on (cancelled, it says it is leaving, so its neighbours
    # need not even wait once); a neighbour delayed by a wait may be skipped once by its own
    # neighbours and is then back (a cascade of one step)
    skipped = [(e["neighbour"], e["step"]) for e in logs if e["event"] == "neighbour_skipped"]
    left = {e["neighbour"] for e in logs if e["event"] == "neighbour_left"}
    assert "p5" in left | {a for a, _ in skipped}
    back = {e["neighbour"] for e in logs if e["event"] == "neighbour_back"}
    assert {a for a, step in skipped if a != "p5" and step < 11} <= back
    assert not [e for e in logs if e["event"] == "message_dropped"]


@pytest.mark.broker
@pytest.mark.timeout(60)
def test_a_restarted_peer_goes_on_from_its_saved_step(
    mosquitto: EmbeddedBroker, tmp_path: Path
) -> None:
    """A peer stopped mid-run and started again goes on from its saved version and its saved
    sealing key (the models its persistent MQTT session queued while it was down still
    open), takes further steps with its neighbours, and they all end done and agreeing."""
    url = mosquitto.url
    configs = _configs(url, tmp_path, steps=30, wait=1.0, eval_every=0)
    plugins = {a: CheckedPlugin("gossip", GossipPlugin(float(i))) for i, a in enumerate(IDS)}

    async def main() -> tuple[int, int]:
        peers, tasks, buses = await _peers(url, tmp_path, configs, plugins)
        try:
            await _until(lambda: peers["p0"].version >= 3, 20)
            tasks["p0"].cancel()
            await asyncio.gather(tasks["p0"], return_exceptions=True)
            # its connection closes too, as a stopped process's does (left open, it would
            # take the client id back from the restarted peer's and the two would flap)
            await buses.pop(IDS.index("p0")).__aexit__(None, None, None)
            await asyncio.sleep(0.5)
            again, more, more_buses = await _peers(url, tmp_path, {"p0": configs["p0"]}, plugins)
            buses += more_buses
            tasks["p0"], peers["p0"] = more["p0"], again["p0"]
            resumed = again["p0"].version
            await _until(lambda: all(peers[a].done for a in IDS), 40)
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            for bus in buses:
                await bus.__aexit__(None, None, None)
        values = [float(np.mean(peers[a].weights[0])) for a in IDS]
        assert max(values) - min(values) < 0.3
        return resumed, peers["p0"].version

    with capture_logs() as logs:
        resumed, final = asyncio.run(main())
    assert resumed >= 3
    assert final > resumed
    # QoS 1 is at least once: the leaving hellos in flight when p0's session is taken over
    # may come twice, and the receiver's dedupe drops the copy; nothing else is dropped
    dropped = [e for e in logs if e["event"] == "message_dropped"]
    assert {e["reason"] for e in dropped} <= {"duplicate"}


async def test_the_book_mixes_a_done_neighbours_final_model_and_never_a_revoked_one() -> None:
    """A done neighbour is not waited for, but its final model is mixed at every step (a
    peer still training is pulled to it); a revoked one is neither waited for nor mixed, and
    its held model is discarded; with both gone the peer is alone."""
    book = NeighbourBook(["a", "b"])
    model = PeerModel(version=3, degree=2, num_examples=1, tensors=to_tensors([np.ones(2)]))
    book.on_model("a", model)
    book.on_model("b", model)
    book.on_hello("a", PeerHello(degree=2, version=3, done=True))
    assert set(await book.collect(0.1, step=4)) == {"a", "b"}
    assert set(await book.collect(0.1, step=5)) == {"a"}  # b is skipped; a's final stays
    assert book.revoke("b")
    assert not book.revoke("stranger")
    assert not book.on_model("b", msgspec.structs.replace(model, version=9))
    assert "b" not in book.present()
    assert set(await book.collect(0.1, step=6)) == {"a"}
    assert not book.all_done()
    book.revoke("a")
    assert book.all_done()
    assert await book.collect(0.1, step=7) == {}


def test_a_peer_takes_only_a_crl_of_its_ca_and_ignores_an_older_one() -> None:
    """``PeerRevocations``: the CRL must be issued and signed by our CA; its serials are
    refused and the named agents returned once; an older CRL (a replay) changes nothing."""
    ours, other = ca.init_ca("fed"), ca.init_ca("fed")
    key, cert = ca.issue(ours, "p1", role=Role.TRAINER)
    del key
    seen = PeerRevocations(ours.cert)

    def body(authority: ca.CertificateAuthority, agents: list[str]) -> Revocations:
        crl = ca.build_crl(authority, [(cert.serial_number, dt.datetime.now(dt.UTC))])
        return Revocations(crl=crl.public_bytes(Encoding.DER), agents=agents)

    old = body(ours, [])
    time.sleep(1.1)  # CRL times have one-second resolution
    assert seen.update(body(ours, ["p1"])) == {"p1"}
    identity = Identity("p1", "fed", Role.TRAINER, cert.serial_number)
    assert seen.refuses(identity)
    assert not seen.refuses(Identity("p2", "fed", Role.TRAINER, cert.serial_number + 1))
    assert seen.update(body(ours, ["p1"])) == frozenset()
    assert seen.update(old) is None
    assert seen.agents == {"p1"}
    with pytest.raises(BadRevocationsError):
        seen.update(body(other, ["p2"]))
    with pytest.raises(BadRevocationsError):
        seen.update(Revocations(crl=b"not a crl", agents=["p2"]))
    assert seen.agents == {"p1"}


def test_metropolis_mixing_keeps_the_mean_when_skips_are_mutual() -> None:
    """One synchronous mix of six peers on a 3-regular graph keeps the mean exactly, with
    all exchanges and with an edge left out on both sides (its weight stays with each
    peer: W stays symmetric and doubly stochastic); left out on one side only, the mean
    moves by exactly w_ij (x_j - x_i) / n."""
    graph = {
        a: graph_neighbours(peer_config(a, "memory://", Path("/"), IDS, degree=3)) for a in IDS
    }
    x = {a: [np.array([float(i) ** 2])] for i, a in enumerate(IDS)}

    def step(skip: set[tuple[str, str]]) -> dict[str, float]:
        return {
            a: float(
                mix(x[a], 3, {b: Neighbour(x[b], 3) for b in graph[a] if (a, b) not in skip})[0][0]
            )
            for a in IDS
        }

    mean = float(np.mean([v[0][0] for v in x.values()]))
    assert np.mean(list(step(set()).values())) == pytest.approx(mean)
    i, j = "p0", sorted(graph["p0"])[0]
    assert np.mean(list(step({(i, j), (j, i)}).values())) == pytest.approx(mean)
    moved = np.mean(list(step({(i, j)}).values())) - mean
    assert moved == pytest.approx(-(x[j][0][0] - x[i][0][0]) / 4 / len(IDS))


def test_a_done_peer_hands_its_final_model_to_a_neighbour_that_starts_late(
    tmp_path: Path,
) -> None:
    """Peer a takes its two steps alone (b silent) and is done; b starts afterwards. a answers
    b's hello with its final model before saying done, so b does not stop at once (nothing to
    mix) but takes its three steps, each pulled halfway to a's final model."""
    from agent.bus.base import BusSettings
    from agent.bus.memory import MemoryBroker, MemoryBus

    ids = ["a", "b"]
    configs = {
        "a": peer_config("a", "memory://", tmp_path, ids, degree=1, steps=2, wait=0.3),
        "b": peer_config("b", "memory://", tmp_path, ids, degree=1, steps=3, wait=2.0),
    }
    broker = MemoryBroker()

    async def main() -> Peer:
        tasks = []
        async with (
            MemoryBus(broker, BusSettings(client_id="a")) as bus_a,
            MemoryBus(broker, BusSettings(client_id="b")) as bus_b,
        ):
            a = Peer(config=configs["a"], bus=bus_a, plugin=CheckedPlugin("g", GossipPlugin(0.0)))
            tasks.append(asyncio.create_task(a.run()))
            await _until(lambda: a.done, 10)
            b = Peer(config=configs["b"], bus=bus_b, plugin=CheckedPlugin("g", GossipPlugin(8.0)))
            tasks.append(asyncio.create_task(b.run()))
            try:
                await _until(lambda: b.done, 10)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        return b

    b = asyncio.run(main())
    assert b.version == 3
    assert float(np.mean(b.weights[0])) == pytest.approx(1.0)  # 8 → 4 → 2 → 1


async def test_a_neighbour_that_says_it_is_leaving_is_not_waited_for() -> None:
    """A clean stop (``leaving``) marks the neighbour absent at once: the next collect does
    not wait for it (it returns long before its wait); its next message brings it back."""
    book = NeighbourBook(["a"])
    book.on_hello("a", PeerHello(degree=1, version=4, leaving=True))
    assert book.present() == []
    async with asyncio.timeout(20):  # the wait is 60 s: only a collect that waited trips it
        assert await book.collect(60.0, step=5) == {}
    book.on_hello("a", PeerHello(degree=1, version=4, reply=True))
    assert book.present() == ["a"]


def test_the_demos_mean_model_averages_floats_and_keeps_the_first_peers_integers() -> None:
    from agent.demo.p2p_mean import mean_model

    models = [
        [np.array([1.0, 3.0], np.float32), np.array([5], np.int64)],
        [np.array([3.0, 5.0], np.float32), np.array([9], np.int64)],
    ]
    mean = mean_model(models)
    assert mean[0].dtype == np.float32
    assert mean[0].tolist() == [2.0, 4.0]
    assert mean[1].tolist() == [5]
    with pytest.raises(ValueError, match="layout"):
        mean_model([models[0], [np.zeros(3)]])
