"""SecAgg+ at cohort scale (issue 15, item 6): a client's own neighbour row is the server's
graph row, the Shamir x-coordinate index, and the aggregator's per-stage log lines."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from agent.bus.memory import MemoryBroker
from agent.config import AgentConfig, SecAggConfig, SecureAggregation
from agent.secagg import client, server
from agent.secagg.graph import neighbours, neighbours_of
from agent.secagg.simulation import announce
from tests.helpers import aggregator_config, federate_in_memory, toy, trainer_config

pytestmark = pytest.mark.timeout(60)


def former_graph(cohort: Sequence[str], *, k: int, seed: bytes) -> dict[str, frozenset[str]]:
    """The graph as agents built it before ``neighbours_of`` (kept verbatim): the graph of a
    seed must not change, or agents of two releases would disagree on it."""
    n = len(cohort)
    order = sorted(cohort, key=lambda a: hashlib.sha256(seed + a.encode()).digest())
    out: dict[str, set[str]] = {a: set() for a in order}
    for i, a in enumerate(order):
        for step in range(1, k // 2 + 1):
            out[a].add(order[(i + step) % n])
            out[a].add(order[(i - step) % n])
        if k % 2:
            out[a].add(order[(i + n // 2) % n])
    return {a: frozenset(v) for a, v in out.items()}


@settings(max_examples=60, deadline=None)
@given(n=st.integers(3, 150), data=st.data())
def test_own_row_is_the_servers_row(n: int, data: st.DataObject) -> None:
    """For any n and valid k (odd k included), every client's ``neighbours_of`` is its row of
    the server's ``neighbours``, which is the graph of the former code."""
    k = data.draw(st.integers(1, n - 1).filter(lambda k: (n * k) % 2 == 0))
    seed = data.draw(st.binary(min_size=32, max_size=32))
    cohort = [f"agent-{i:04d}" for i in range(n)]
    graph = neighbours(cohort, k=k, seed=seed)
    assert graph == former_graph(cohort, k=k, seed=seed)
    for a in cohort:
        assert neighbours_of(cohort, a, k=k, seed=seed) == graph[a]


def test_client_setup_matches_the_server_graph_at_1000() -> None:
    """At n = 1000 with the default k, each client's setup holds exactly its server row."""
    setup = announce(1000, 1)
    graph = server.setup(setup).graph
    assert all(client.setup(a, setup).neighbours == graph[a] for a in setup.cohort)


def test_own_row_refuses_what_the_graph_refuses() -> None:
    seed = os.urandom(32)
    with pytest.raises(ValueError, match="not in the cohort"):
        neighbours_of(["a", "b", "c", "d"], "z", k=2, seed=seed)
    with pytest.raises(ValueError, match="distinct"):
        neighbours_of(["a", "a", "b", "c"], "a", k=2, seed=seed)
    with pytest.raises(ValueError, match="regular"):
        neighbours_of(["a", "b", "c"], "a", k=1, seed=seed)


def test_x_of_is_the_cohort_position() -> None:
    setup = announce(50, 1)
    assert [setup.x_of(a) for a in setup.cohort] == list(range(1, 51))
    with pytest.raises(ValueError, match="not in the cohort"):
        setup.x_of("stranger")


def _secure(tmp_path: Path, agents: int) -> AgentConfig:
    config = aggregator_config("mem://", tmp_path, agents=agents, round_timeout=5.0, rounds=1)
    schedule = msgspec.structs.replace(
        config.aggregator,
        min_fit_clients=3,
        secure_aggregation=SecureAggregation.SECAGG_PLUS,
        secagg=SecAggConfig(stage_timeout=2.0),
    )
    return msgspec.structs.replace(config, aggregator=schedule)


async def test_each_stage_logs_its_seconds_and_counts(tmp_path: Path) -> None:
    """One ``secagg_stage_closed`` line per stage: its seconds split into collecting, closing
    and relaying, who was expected and answered, one relay message per recipient for keys and
    shares and a single broadcast for the unmask request."""
    plugins = {f"a{i}": toy(float(i), i) for i in range(1, 7)}
    with capture_logs() as logs:
        summary, _ = await federate_in_memory(
            plugins,
            _secure(tmp_path, 6),
            lambda agent_id: trainer_config(agent_id, "mem://", tmp_path),
        )
    assert [r.survivors for r in summary.rounds] == [sorted(plugins)]
    lines = [e for e in logs if e["event"] == "secagg_stage_closed"]
    assert [e["stage"] for e in lines] == [
        "advertise_keys",
        "share_keys",
        "collect_masked_input",
        "unmask",
    ]
    for e in lines:
        assert e["expected"] == e["answered"] == 6
        assert e["dropout_count"] == 0
        parts = e["collect_seconds"] + e["close_seconds"] + e["relay_seconds"]
        assert 0 <= parts <= e["seconds"] + 1e-6
    # relay_keys and relay_shares: one per member; unmask_request: one broadcast
    assert [e["relayed"] for e in lines] == [6, 6, 1, 0]
    assert all(e["relay_bytes"] > 0 for e in lines[:3])


class Vanishing(MemoryBroker):
    """Loses the publishes on the given topics: their senders vanish mid-stage, after the
    previous stage's per-recipient relay reached them."""

    def __init__(self, lost: set[str]) -> None:
        super().__init__()
        self.lost = lost

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        if topic not in self.lost:
            super().publish(topic, payload, retain=retain)


async def test_a_dropout_mid_stage_leaves_the_others_batches_whole(tmp_path: Path) -> None:
    """Of seven agents, z1 vanishes in share_keys (after its relay_keys batch came) and z2 in
    unmask: share_keys closes at its deadline without z1, each live member gets one
    relay_shares batch holding only live senders' ciphertexts, and the round sums the six
    masked inputs (z2's is in the sum; its self-mask is rebuilt from its neighbours)."""
    broker = Vanishing({"fl/fed/secagg/share_keys/z1", "fl/fed/secagg/unmask/z2"})
    plugins = {f"a{i}": toy(float(i), 1) for i in range(1, 6)}
    plugins |= {"z1": toy(100.0, 1), "z2": toy(6.0, 1)}
    with capture_logs() as logs:
        summary, _ = await federate_in_memory(
            plugins,
            _secure(tmp_path, 7),
            lambda agent_id: trainer_config(agent_id, "mem://", tmp_path),
            broker=broker,
        )
    record = summary.rounds[0]
    assert record.survivors == ["a1", "a2", "a3", "a4", "a5", "z2"]
    assert "z1" in record.dropouts
    assert record.loss == pytest.approx(21 / 6, abs=1e-3)
    lines = {e["stage"]: e for e in logs if e["event"] == "secagg_stage_closed"}
    share = lines["share_keys"]
    assert (share["expected"], share["answered"], share["timed_out"]) == (7, 6, True)
    assert share["dropouts"] == ["z1"]
    assert share["relayed"] == 6
    unmask = lines["unmask"]
    assert (unmask["expected"], unmask["answered"], unmask["timed_out"]) == (6, 5, True)
