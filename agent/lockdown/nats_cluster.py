"""nats-server topologies: a cluster of nodes with routes, and leaf nodes at edge sites.

Every node is locked down as the single server of :mod:`agent.lockdown.nats` is (the same
client listener, mTLS, per-identity users or the auth callout); these are the blocks added:

- **Routes** (``cluster {}`` on each node of the core): a listener on the node's cluster port,
  a route to every other node, and mTLS both ways. Each node presents its broker certificate
  (``CN=broker,OU=broker``, ``agent.lockdown.files``) and ``verify_and_map`` admits a route
  only under that subject (``cluster.authorization.user``), so a trainer's certificate, of
  the same CA, cannot open a route (a route would bypass every permission).
- **Leaf-node listener** (``leafnodes {}`` on each core node, with ``sites``): mTLS, and
  ``verify_and_map`` maps a site's certificate (``CN=<site>,OU=broker``) to a user of the main
  ``authorization`` block that allows only leaf connections
  (``allowed_connection_types: ["LEAFNODE"]``). What that user may publish is what the site
  may export to the hub, what it may subscribe to is what it may import (nats-server's leaf
  node model): the writes and reads of a trainer and of the enroll identity, for any agent id.
  The site's own server enforces the per-agent permissions below that.
- **Leaf node** (a site's server, :func:`render_remote`): a client listener for the site's
  agents, locked down with the static per-identity users (enrollment and revocation: rerun
  ``fedbus broker-config`` for the site and reload it), plus ``leafnodes.remotes`` naming every
  core node's leaf port; it presents the site's certificate.

Authorization across the topology (nats-server 2.10+ config mode: every user is in the
global account ``$G``, which routes and leaf connections share):

- A cluster carries subscription interest, and so permissions-checked messages, over its
  routes: an agent on node B and the aggregator on node A talk as on one server; every node
  checks the permissions of its own clients. Static users are listed on every node (render
  them all from one registry and reload every node on a change).
- Auth callout: every core node carries the same ``auth_callout`` block; the node a client
  connects to publishes the authorization request on ``$SYS.REQ.USER.AUTH`` in ``$G``, and
  the routes carry it to the aggregator's subscription on whichever node it is connected to
  (no node can admit anyone while the aggregator is away: clients retry with backoff). Site
  users are listed in ``auth_users`` (a site is admitted by its certificate, not by the
  callout, which admits trainers and the enroll identity only).
- A leaf node does not use the hub's callout: nats-server refuses the callout subject on
  the leaf connection when the service is on the hub (nats-io/nats-server#7030), so a site
  lists its agents statically (``ConfigError`` for a leaf with ``--auth-callout``).
- Revocation: on the static users, leaving the agent out and reloading each node and site;
  under the callout, at the agent's next connection (``agent.runtime.auth_callout``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from agent.errors import ConfigError
from agent.identity.certificates import NAME_RE
from agent.lockdown.access import ENROLL_IDENTITY, enroll_rules, trainer_rules
from agent.lockdown.layout import CA_FILE, CERT_FILE, KEY_FILE, TLS_HANDSHAKE_TIMEOUT
from agent.lockdown.nats import subject_name, subjects
from agent.role import Role

#: The CN of every core node's certificate, the one subject a route is admitted under.
NODE_CN = "broker"
#: nats-server's conventional ports.
CLUSTER_PORT = 6222
LEAF_PORT = 7422


@dataclass(frozen=True, slots=True)
class ClusterNode:
    """One node of the core: its name and where it listens.

    Attributes:
        name: the node's directory and ``server_name`` ([A-Za-z0-9_-], 1-64).
        host: its address, as the other nodes, the sites and the agents dial it.
        port: the client port (agents).
        cluster_port: the route port (other nodes).
        leaf_port: the leaf-node port (sites).
    """

    name: str
    host: str
    port: int = 4222
    cluster_port: int = CLUSTER_PORT
    leaf_port: int = LEAF_PORT

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name):
            raise ConfigError(f"node name {self.name!r} must be 1-64 of [A-Za-z0-9_-]")
        for port in (self.port, self.cluster_port, self.leaf_port):
            if not 0 < port < 65536:
                raise ConfigError(f"node {self.name}: {port} is not a TCP port")
        if len({self.port, self.cluster_port, self.leaf_port}) < 3:
            raise ConfigError(f"node {self.name}: the three ports must differ")

    @property
    def netloc(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def route_url(self) -> str:
        return f"tls://{self.netloc}:{self.cluster_port}"

    @property
    def leaf_url(self) -> str:
        return f"tls://{self.netloc}:{self.leaf_port}"

    @property
    def client_url(self) -> str:
        return f"tls://{self.netloc}:{self.port}"


def parse_node(spec: str) -> ClusterNode:
    """``NAME=HOST[:PORT[:CLUSTER_PORT[:LEAF_PORT]]]`` (the CLI's ``--node``); an IPv6 host
    in brackets.

    Raises:
        ConfigError: anything else.
    """
    name, sep, rest = spec.partition("=")
    if not sep or not rest:
        raise ConfigError(f"--node {spec!r}: expected NAME=HOST[:PORT[:CLUSTER_PORT[:LEAF_PORT]]]")
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        fields = tail.removeprefix(":").split(":") if tail else []
    else:
        host, *fields = rest.split(":")
    try:
        ports = [int(field) for field in fields]
    except ValueError:
        raise ConfigError(f"--node {spec!r}: the ports must be numbers") from None
    if not host or len(ports) > 3:
        raise ConfigError(f"--node {spec!r}: expected NAME=HOST[:PORT[:CLUSTER_PORT[:LEAF_PORT]]]")
    defaults = (4222, CLUSTER_PORT, LEAF_PORT)
    port, cluster_port, leaf_port = [*ports, *defaults[len(ports) :]]
    return ClusterNode(name, host, port, cluster_port, leaf_port)


def check_topology(nodes: Sequence[ClusterNode], sites: Sequence[str]) -> None:
    """A cluster: at least two nodes, distinct names and listeners, valid site names.

    Raises:
        ConfigError: otherwise.
    """
    if len(nodes) < 2:
        raise ConfigError("a cluster needs at least two --node (three survive one failure)")
    if len({node.name for node in nodes}) < len(nodes):
        raise ConfigError("two nodes share a name")
    listeners = [(n.host, p) for n in nodes for p in (n.port, n.cluster_port, n.leaf_port)]
    if len(set(listeners)) < len(listeners):
        raise ConfigError("two nodes listen on the same host and port")
    for site in sites:
        check_site(site)


def check_site(site: str) -> None:
    """A site's name is its certificate's CN: not a core node's, nor a reserved identity."""
    if not NAME_RE.match(site):
        raise ConfigError(f"site name {site!r} must be 1-64 of [A-Za-z0-9_-]")
    if site in (NODE_CN, ENROLL_IDENTITY):
        raise ConfigError(f"site name {site!r} is reserved")


def _tls(directory: str, *, verify_and_map: bool) -> list[str]:
    lines = [
        "  tls {",
        f'    cert_file: "{directory}/{CERT_FILE}"',
        f'    key_file: "{directory}/{KEY_FILE}"',
        f'    ca_file: "{directory}/{CA_FILE}"',
    ]
    if verify_and_map:
        lines.append("    verify_and_map: true")
    return [*lines, f"    timeout: {TLS_HANDSHAKE_TIMEOUT}", "  }"]


def render_routes(
    federation: str, node: ClusterNode, nodes: Sequence[ClusterNode], *, directory: str
) -> str:
    """``node``'s ``cluster {}`` block: its route listener and a route to every other node."""
    others = [json.dumps(other.route_url) for other in nodes if other.name != node.name]
    return "\n".join(
        [
            "# Routes to the other nodes of the core, mTLS both ways: a route is admitted only",
            "# under the core nodes' own certificate subject, never a client's.",
            "cluster {",
            f'  name: "fedbus-{federation}"',
            f'  host: "{node.host}"',
            f"  port: {node.cluster_port}",
            "  routes = [",
            *(f"    {url}," for url in others),
            "  ]",
            *_tls(directory, verify_and_map=True),
            "  authorization {",
            f"    user: {json.dumps(subject_name(NODE_CN, federation, Role.BROKER))}",
            "  }",
            "}",
        ]
    )


def render_leaf_listener(node: ClusterNode, *, directory: str) -> str:
    """A core node's ``leafnodes {}`` block: where the sites connect (mTLS, mapped)."""
    return "\n".join(
        [
            "# Leaf nodes of the sites connect here; a site's certificate maps to its user in",
            "# the authorization block (leaf connections only).",
            "leafnodes {",
            f'  host: "{node.host}"',
            f"  port: {node.leaf_port}",
            *_tls(directory, verify_and_map=True),
            "}",
        ]
    )


def site_user(federation: str, site: str) -> str:
    """The ``authorization.users`` entry of a site's leaf connection: publish (export to the
    hub) what a trainer or the enroll identity may publish, subscribe (import) what they may
    read, for any agent id; nothing but a leaf connection may use it."""
    publish, subscribe = subjects(trainer_rules(), federation, agent_id="+")
    enroll_pub, enroll_sub = subjects(enroll_rules(), federation, agent_id="+")
    lines = [
        f"    # site {site}: its leaf node, for the agents it admits",
        "    {",
        f"      user: {json.dumps(subject_name(site, federation, Role.BROKER))}",
        '      allowed_connection_types: ["LEAFNODE"]',
        "      permissions: {",
        "        publish: { allow: [",
        *(f"          {json.dumps(s)}," for s in [*publish, *enroll_pub]),
        "        ] }",
        "        subscribe: { allow: [",
        *(f"          {json.dumps(s)}," for s in [*subscribe, *enroll_sub]),
        "        ] }",
        "      }",
        "    }",
    ]
    return "\n".join(lines)


def render_remote(hub: Sequence[str], *, directory: str) -> str:
    """A site's ``leafnodes {}`` block: one remote listing every core node's leaf URL
    (``tls://host:7422``; nats-server moves to another when one fails), presenting the
    site's certificate and verifying the hub's against the federation CA."""
    if not hub:
        raise ConfigError("a leaf node needs the hub's leaf URLs (--hub)")
    for url in hub:
        if not url.startswith("tls://"):
            raise ConfigError(f"hub leaf URL {url!r} must be tls://host:port")
    return "\n".join(
        [
            "# This site's link to the hub: every core node's leaf port (the next one when a",
            "# node fails), mTLS with the site's certificate.",
            "leafnodes {",
            "  reconnect: 1",
            "  remotes = [",
            "    {",
            "      urls: [",
            *(f"        {json.dumps(url)}," for url in hub),
            "      ]",
            *("    " + line for line in _tls(directory, verify_and_map=False)),
            "    }",
            "  ]",
            "}",
        ]
    )
