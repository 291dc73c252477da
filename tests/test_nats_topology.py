"""Several servers in ``bus_url`` and the rendered NATS topology (``fedbus broker-config nats
--node … | --leaf …``), without a broker: what is accepted, refused and written."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.bus.base import BusSettings
from agent.bus.nats_bus import NatsBus
from agent.bus.url import bus_from_url, parse_broker_urls
from agent.cli.broker_config import broker_config
from agent.errors import ConfigError
from agent.identity.ca import init_ca, save_ca
from agent.lockdown.nats_cluster import ClusterNode, check_topology, parse_node

pytestmark = pytest.mark.timeout(30)


def test_a_nats_url_may_list_the_nodes_of_a_cluster() -> None:
    """Comma-separated servers (spaces allowed) are parsed in order; the adapter starts each
    connection one server further along the list, wrapping around."""
    url = "tls://a:4222, tls://b:4223,tls://[::1]"
    assert [(a.host, a.port) for a in parse_broker_urls(url)] == [
        ("a", 4222),
        ("b", 4223),
        ("::1", 4222),
    ]
    bus = bus_from_url("nats://a:1,nats://b:2,nats://c:3", BusSettings("x"))
    assert isinstance(bus, NatsBus)
    starts = [bus._rotation()[0] for _ in range(4)]
    assert starts == ["nats://a:1", "nats://b:2", "nats://c:3", "nats://a:1"]
    assert bus._rotation() == ["nats://b:2", "nats://c:3", "nats://a:1"]


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("tls://a:4222,,tls://b:4222", "an empty entry"),
        ("tls://a:4222,nats://b:4222", "the same scheme"),
        ("tls://a:4222,tls://a:4222", "listed twice"),
        ("mqtts://a:8883,mqtts://b:8883", "takes one"),
        ("tls://a:4222,b:4222", "unknown scheme"),
    ],
)
def test_bad_server_lists_are_refused(url: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        bus_from_url(url, BusSettings("x"))


def test_nodes_are_parsed_and_checked() -> None:
    assert parse_node("n1=10.0.0.1") == ClusterNode("n1", "10.0.0.1", 4222, 6222, 7422)
    assert parse_node("n2=[::1]:1:2:3") == ClusterNode("n2", "::1", 1, 2, 3)
    for bad in ("n1", "n1=", "n1=h:x", "n1=h:1:2:3:4", "bad name=h"):
        with pytest.raises(ConfigError):
            parse_node(bad)
    one = ClusterNode("n1", "h", 1, 2, 3)
    with pytest.raises(ConfigError, match="at least two"):
        check_topology([one], [])
    with pytest.raises(ConfigError, match="same host and port"):
        check_topology([one, ClusterNode("n2", "h", 4, 5, 3)], [])
    with pytest.raises(ConfigError, match="reserved"):
        check_topology([one, ClusterNode("n2", "h", 4, 5, 6)], ["broker"])


def _cli(tmp_path: Path, *args: str) -> str:
    if not (tmp_path / "ca").exists():
        save_ca(init_ca("fed"), tmp_path / "ca")
    result = CliRunner().invoke(
        broker_config, ["nats", "--ca-dir", str(tmp_path / "ca"), "--agent", "t1", *args]
    )
    assert result.exit_code == 0, result.output
    return result.output


def test_the_cli_writes_a_cluster_with_routes_and_a_leaf_listener(tmp_path: Path) -> None:
    """One directory per node: routes to the others under mTLS admitting only the nodes'
    own subject, the per-agent users, and a site user for leaf connections only."""
    nodes = ["--node", "n1=127.0.0.1:4222:6222:7422", "--node", "n2=127.0.0.1:4223:6223:7423"]
    output = _cli(tmp_path, "--out", str(tmp_path / "core"), *nodes, "--site", "depot")
    assert "bus_url = tls://127.0.0.1:4222,tls://127.0.0.1:4223" in output
    conf = (tmp_path / "core" / "n1" / "nats-server.conf").read_text()
    assert '"tls://127.0.0.1:6223",' in conf
    assert '"tls://127.0.0.1:6222",' not in conf  # no route to itself
    assert 'user: "CN=broker,OU=broker,O=fed"' in conf
    assert conf.count("verify_and_map: true") == 3  # clients, routes, leaf nodes
    assert "port: 7422" in conf
    assert 'user: "CN=depot,OU=broker,O=fed"\n      allowed_connection_types: ["LEAFNODE"]' in conf
    assert 'user: "CN=t1,OU=trainer,O=fed"' in conf
    assert (tmp_path / "core" / "n2" / "server.key").is_file()


def test_the_cli_writes_a_leaf_node_and_refuses_the_callout_there(tmp_path: Path) -> None:
    """A site's leaf node links to every hub URL under its own certificate (CN = the site)
    and lists its agents; --auth-callout is refused for it, and under the callout on the
    cluster the site is an auth_users identity."""
    hub = ["--hub", "tls://10.0.0.1:7422", "--hub", "tls://10.0.0.2:7422"]
    _cli(tmp_path, "--out", str(tmp_path / "leaf"), "--leaf", "depot", "--port", "4333", *hub)
    conf = (tmp_path / "leaf" / "nats-server.conf").read_text()
    assert '"tls://10.0.0.1:7422",\n        "tls://10.0.0.2:7422",' in conf
    assert 'user: "CN=t1,OU=trainer,O=fed"' in conf
    assert "port: 4333" in conf
    runner = CliRunner()
    ca_dir = str(tmp_path / "ca")
    out = str(tmp_path / "x")
    refused = runner.invoke(
        broker_config,
        ["nats", "--ca-dir", ca_dir, "--out", out, "--leaf", "depot", *hub, "--auth-callout"],
    )
    assert refused.exit_code != 0
    assert "nats-server#7030" in str(refused.exception) + refused.output
    nodes = ["--node", "n1=127.0.0.1:1:2:3", "--node", "n2=127.0.0.1:4:5:6"]
    _cli(tmp_path, "--out", str(tmp_path / "cc"), *nodes, "--site", "depot", "--auth-callout")
    conf = (tmp_path / "cc" / "n2" / "nats-server.conf").read_text()
    assert 'auth_users: [ "CN=aggregator,OU=aggregator,O=fed", "CN=depot,OU=broker,O=fed" ]' in conf
    assert "CN=t1," not in conf  # the callout admits the trainers
    misuse = runner.invoke(broker_config, ["nats", "--ca-dir", ca_dir, "--out", out, *hub])
    assert misuse.exit_code == 2


async def test_enrollment_probes_every_server_of_a_cluster() -> None:
    """``fedbus enroll``'s reachability probe passes when any server of the list listens,
    and names the last one tried when none does."""
    from agent.brokers import free_port
    from agent.errors import IdentityError
    from agent.identity.device import _probe

    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    listening = server.sockets[0].getsockname()[1]
    closed = free_port()
    async with server:
        await _probe(f"tls://127.0.0.1:{closed},tls://127.0.0.1:{listening}", within=2.0)
    with pytest.raises(IdentityError, match=f"127.0.0.1:{listening}") as raised:
        await _probe(f"tls://127.0.0.1:{closed},tls://127.0.0.1:{listening}", within=2.0)
    assert raised.value.reason == "broker_unreachable"
