"""Write the broker directories of a NATS topology: a cluster at the core, leaf nodes at sites.

::

    nodes = [ClusterNode("nats-1", "10.0.0.1"), ClusterNode("nats-2", "10.0.0.2"), ...]
    write_cluster(ca, out, members, nodes, sites=["site-a"])   # out/nats-1/, out/nats-2/, …
    write_leaf(ca, site_dir, members, "site-a", hub=[n.leaf_url for n in nodes], port=4222)

Each directory is one server's (``agent.lockdown.layout``: ``ca.pem``, ``server.pem``,
``server.key``, ``nats-server.conf``), written by ``agent.lockdown.files`` with the blocks of
``agent.lockdown.nats_cluster``; ``regenerate`` rewrites any of them for new members. A core
node's certificate is ``CN=broker`` with the node's host in its SAN; a site's is
``CN=<site>``, the name its leaf connection is admitted under.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from agent.errors import ConfigError
from agent.identity.ca import CertificateAuthority
from agent.lockdown.files import BrokerFiles, write_broker_config
from agent.lockdown.members import Members
from agent.lockdown.nats import subject_name
from agent.lockdown.nats_cluster import (
    NODE_CN,
    ClusterNode,
    check_site,
    check_topology,
    render_leaf_listener,
    render_remote,
    render_routes,
    site_user,
)
from agent.role import Role


def write_cluster(
    ca: CertificateAuthority,
    directory: Path,
    members: Members,
    nodes: Sequence[ClusterNode],
    *,
    sites: Sequence[str] = (),
    server_names: Sequence[str] = (),
    callout_issuer: str | None = None,
) -> list[BrokerFiles]:
    """One directory per node under ``directory`` (``directory/<node name>/``), each a
    server locked down for ``members`` with routes to every other node, and with ``sites``
    a leaf-node listener admitting those sites' leaf connections.

    Raises:
        ConfigError: fewer than two nodes, clashing names or listeners, a bad site name.
    """
    check_topology(nodes, sites)
    written = []
    fed = ca.federation
    users = tuple(
        (subject_name(site, fed, Role.BROKER), site_user(fed, site)) for site in sorted(set(sites))
    )
    for node in nodes:
        where = (directory / node.name).resolve()
        blocks = [
            f'server_name: "{node.name}"',
            render_routes(fed, node, nodes, directory=str(where)),
        ]
        if sites:
            blocks.append(render_leaf_listener(node, directory=str(where)))
        written.append(
            write_broker_config(
                "nats",
                ca,
                where,
                members,
                port=node.port,
                host=node.host,
                server_names=server_names,
                callout_issuer=callout_issuer,
                topology=blocks,
                extra_users=users,
                cert_name=NODE_CN,
            )
        )
    return written


def write_leaf(
    ca: CertificateAuthority,
    directory: Path,
    members: Members,
    site: str,
    *,
    hub: Sequence[str],
    port: int,
    host: str = "127.0.0.1",
    server_names: Sequence[str] = (),
    callout_issuer: str | None = None,
) -> BrokerFiles:
    """A site's leaf node in ``directory``: a server for the site's agents, locked down for
    ``members`` with static per-identity users, linked to the hub's leaf URLs ``hub``
    (``tls://host:7422`` of every core node) under the site's certificate.

    Raises:
        ConfigError: a bad site name or hub URL, or ``callout_issuer`` (a leaf node cannot
            use the hub's auth callout: ``agent.lockdown.nats_cluster``).
    """
    check_site(site)
    if callout_issuer is not None:
        raise ConfigError(
            "a leaf node admits its agents itself (static users, rerun and reload per "
            "enrollment): nats-server does not carry the auth callout from a leaf to the "
            "hub's service (nats-io/nats-server#7030); render the leaf without --auth-callout"
        )
    where = directory.resolve()
    return write_broker_config(
        "nats",
        ca,
        where,
        members,
        port=port,
        host=host,
        server_names=server_names,
        topology=[f'server_name: "{site}"', render_remote(hub, directory=str(where))],
        cert_name=site,
    )
