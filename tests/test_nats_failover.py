"""Failover on a locked-down 3-node nats-server cluster (``tests.test_nats_cluster``'s fixture):
the aggregator's own node dies mid-round under SecAgg+ and the round completes with every
agent (``roles.trainer.resend``); a leaf-node site re-links to another core node when the one
it was linked to dies, and its agents keep training."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.brokers import EmbeddedBroker, free_port
from agent.config import SecureAggregation
from agent.identity import ca
from agent.lockdown import Members, embedded_broker
from agent.lockdown.topology import write_leaf
from agent.plugin.loader import CheckedPlugin
from tests.helpers import ToyPlugin
from tests.test_nats_cluster import (
    HOME,
    SITE,
    TRAINERS,
    WAIT,
    Cluster,
    cluster_configs,
    federate_on_cluster,
    running_cluster,
    spread_urls,
)

pytestmark = [pytest.mark.broker, pytest.mark.timeout(90)]

#: Seconds for a message in flight to cross a leaf link. What crosses a link while it is down
#: is lost: no client's session broke, so nobody replays (ARCHITECTURE.md §8).
SETTLE = 0.5


@pytest.fixture
def core(tmp_path: Path) -> Iterator[Cluster]:
    """A running 3-node cluster admitting ``TRAINERS`` (every node stopped afterwards)."""
    members = Members("aggregator", tuple(TRAINERS))
    with running_cluster(ca.init_ca("fed"), members, tmp_path / "core") as started:
        yield started


def kill(broker: EmbeddedBroker) -> None:
    """SIGKILL one node (no goodbye to its clients or routes) and reap it."""
    assert broker.pid is not None
    os.kill(broker.pid, signal.SIGKILL)
    broker.stop()


async def until(logs: list[dict[str, Any]], done: Any) -> None:
    """Wait until ``done(logs)`` holds (the test's timeout bounds it)."""
    while not done(logs):
        await asyncio.sleep(0.005)


def stage_closed(stage: str, times: int = 1) -> Any:
    """``until``'s test: the SecAgg+ stage ``stage`` closed ``times`` times (its relay sent)."""
    return lambda logs: (
        sum(e["event"] == "secagg_stage_closed" and e.get("stage") == stage for e in logs) >= times
    )


async def test_a_secagg_round_survives_the_death_of_the_aggregators_node(
    core: Cluster, tmp_path: Path
) -> None:
    """Six trainers, two per node, the aggregator on n0. In round 1, once the shares are
    relayed and while the plugins train, n0 is SIGKILLed; training is released as soon as
    the aggregator has lost its session, so the four trainers on n1 and n2 publish their
    masked inputs into the gap, where no node has the aggregator's subscriptions. After its
    reconnect the aggregator says so (``federation_status.reconnects``), those trainers
    publish their recent messages again, the copies it had are dropped by message id, and
    both rounds end with all six survivors and the exact mean (no input counted twice)."""
    home = HOME
    config, trainers, tls = cluster_configs(
        core,
        tmp_path,
        spread_urls(core),
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
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=16))

    def aggregator_cut(logs: list[dict[str, Any]]) -> bool:
        return any(
            e["event"] == "bus_disconnected" and e.get("client_id") == "fed-aggregator"
            for e in logs
        )

    async def kill_mid_round(logs: list[dict[str, Any]]) -> None:
        await until(logs, stage_closed("share_keys"))
        kill(core.brokers[0])
        await until(logs, aggregator_cut)
        training.set()  # masked inputs now, while the aggregator is away

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
    assert (first.survivors, first.dropouts, first.model_version) == (TRAINERS, [], 1)
    assert second.survivors == TRAINERS
    assert second.loss == pytest.approx(3.5, abs=1e-3)  # the mean of 1..6, each once
    stayed = sum(n != 0 for n in home.values())  # their sessions never broke: told to resend
    told = [e for e in logs if e["event"] == "aggregator_reconnected" and e["resend"]]
    assert len(told) >= stayed
    events = [e["event"] for e in logs]
    assert events.index("bus_disconnected") < events.index("round_finished")  # mid-round 1


async def test_a_leaf_site_relinks_to_another_core_node_and_keeps_training(
    core: Cluster, tmp_path: Path
) -> None:
    """A site's leaf node lists every core node's leaf port. Once it has linked to one, the
    aggregator and a core trainer connect to the other two; in round 2, while the plugins
    train (nothing in flight over the link), the hub node the leaf was linked to is
    SIGKILLed. The leaf links to another core node (its agents' own sessions, to the leaf,
    never break) and the site's two trainers finish round 2 and round 3 with the rest."""
    leaf_files = write_leaf(
        core.authority,
        tmp_path / "leaf",
        core.members,
        SITE,
        hub=[node.leaf_url for node in core.nodes],
        port=free_port(),
    )

    def linked(broker: EmbeddedBroker) -> bool:
        return "Leafnode connection created" in broker.log_tail(200)

    with embedded_broker(leaf_files) as leaf:
        deadline = time.monotonic() + WAIT
        while not any(linked(b) for b in core.brokers):
            assert time.monotonic() < deadline, "the leaf never linked to the hub"
            await asyncio.sleep(0.05)
        hub = next(i for i, b in enumerate(core.brokers) if linked(b))
        others = [i for i in range(3) if i != hub]
        at_site = ["t3", "t4"]
        urls = {"aggregator": core.nodes[others[0]].client_url}
        urls |= {"t1": core.nodes[others[1]].client_url}
        urls |= {agent_id: leaf.url for agent_id in at_site}
        config, trainers, tls = cluster_configs(
            core,
            tmp_path,
            urls,
            rounds=3,
            min_fit_clients=3,
            secure_aggregation=SecureAggregation.SECAGG_PLUS,
        )
        training = threading.Event()
        plugins = {
            a: CheckedPlugin("toy", ToyPlugin(float(i + 1), 1, block=training))
            for i, a in enumerate(trainers)
        }
        survivor_brokers = [core.brokers[i] for i in others]

        async def kill_in_round_2(logs: list[dict[str, Any]]) -> None:
            training.set()
            await until(logs, lambda ls: any(e["event"] == "round_finished" for e in ls))
            training.clear()  # round 2's fits wait
            await until(logs, stage_closed("share_keys", times=2))
            await asyncio.sleep(SETTLE)  # the shares' relay has crossed the link
            kill(core.brokers[hub])
            while not any(linked(b) for b in survivor_brokers):
                await asyncio.sleep(0.02)
            await asyncio.sleep(SETTLE)  # the new hub has told the leaf our subscriptions
            training.set()

        with capture_logs() as logs:
            async with asyncio.timeout(60):
                killer = asyncio.create_task(kill_in_round_2(logs))
                try:
                    summary, _ = await federate_on_cluster(config, trainers, tls, plugins)
                finally:
                    training.set()
                    killer.cancel()
    assert killer.done()
    assert not killer.cancelled(), "the hub node was never killed"
    assert [r.survivors for r in summary.rounds] == [["t1", "t3", "t4"]] * 3
    assert not any(e["event"] == "bus_disconnected" for e in logs)  # nobody's session broke
