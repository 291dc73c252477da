"""``fedbus broker-config nats --node … | --leaf SITE --hub …``: the options checked and
handed to ``agent.lockdown.topology`` (a cluster's node directories, or a site's leaf node)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

from agent.errors import ConfigError
from agent.identity.ca import CertificateAuthority
from agent.lockdown.files import BrokerFiles
from agent.lockdown.members import Members


def write_topology(
    ca: CertificateAuthority,
    out_dir: Path,
    members: Members,
    *,
    nodes: Sequence[str],
    sites: Sequence[str],
    leaf_site: str | None,
    hub: Sequence[str],
    port: int,
    host: str,
    server_names: Sequence[str],
    callout_issuer: str | None,
) -> list[BrokerFiles]:
    """The directories written: one per ``--node``, or the one leaf node.

    Raises:
        click.UsageError: options that do not go together; ``ConfigError`` from the writers.
    """
    from agent.lockdown.nats_cluster import parse_node
    from agent.lockdown.topology import write_cluster, write_leaf

    if leaf_site is not None:
        if nodes or sites:
            raise click.UsageError("--leaf writes one site's server: no --node or --site")
        if not hub:
            raise click.UsageError("--leaf needs --hub, once per core node")
        return [
            write_leaf(
                ca,
                out_dir,
                members,
                leaf_site,
                hub=hub,
                port=port,
                host=host,
                server_names=server_names,
                callout_issuer=callout_issuer,
            )
        ]
    if hub:
        raise click.UsageError("--hub goes with --leaf")
    if not nodes:
        raise click.UsageError("--site goes with --node (the cluster that admits the site)")
    try:
        parsed = [parse_node(spec) for spec in nodes]
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    return write_cluster(
        ca,
        out_dir,
        members,
        parsed,
        sites=sites,
        server_names=server_names,
        callout_issuer=callout_issuer,
    )
