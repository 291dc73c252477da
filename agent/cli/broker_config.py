"""``fedbus broker-config mosquitto|nats``: write a locked-down broker configuration.

The enrolled agents come from ``--agent`` and, when the CA directory has one, from its
registry (``registry.sqlite``: enrolled and revoked agents, revoked serials). Run it again
after every enrollment (nats-server lists each agent) and revocation, then reload the broker
(``--reload-pid``, or SIGHUP yourself) -- except for nats with ``--auth-callout``: the broker
then asks the aggregator about every client (``agent.runtime.auth_callout``), so enrollment
and revocation take effect with no rerun and no reload.

nats also renders a topology (``agent.lockdown.topology``, broker_config/README.md): a cluster
(``--node`` per node, ``--site`` per edge site it admits) or a site's leaf node (``--leaf SITE``
with ``--hub`` per core node).
"""

from __future__ import annotations

from pathlib import Path

import click

from agent.brokers import BrokerKind

_KINDS: dict[str, BrokerKind] = {"mosquitto": "mqtt", "nats": "nats"}
_DEFAULT_PORTS: dict[str, int] = {"mosquitto": 8883, "nats": 4222}
_RUN: dict[str, str] = {"mosquitto": "mosquitto -c {config}", "nats": "nats-server -c {config}"}


@click.command("broker-config")
@click.argument("broker", type=click.Choice(sorted(_KINDS)))
@click.option(
    "--ca-dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The federation's CA directory (ca.pem, ca.key; registry.sqlite if any).",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write the broker's files (created; rewritten in place).",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Listen port [default: 8883 for mosquitto, 4222 for nats].",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Listen address.")
@click.option(
    "--agent",
    "agents",
    multiple=True,
    metavar="ID",
    help="An enrolled trainer (repeat; added to the registry's).",
)
@click.option(
    "--aggregator",
    default=None,
    metavar="ID",
    help="The aggregator's id [default: the registry's, else 'aggregator'].",
)
@click.option(
    "--server-name",
    "server_names",
    multiple=True,
    metavar="NAME",
    help="Another DNS name or address for the broker certificate (repeat).",
)
@click.option(
    "--mosquitto-user",
    default=None,
    metavar="USER",
    help="mosquitto: the account it drops to when started as root (default: its "
    "own 'mosquitto', which must be able to read server.key).",
)
@click.option(
    "--reload-pid",
    type=int,
    default=None,
    metavar="PID",
    help="Then make this running broker reread its files (SIGHUP).",
)
@click.option(
    "--auth-callout",
    is_flag=True,
    help="nats: admit every client but the aggregator through the aggregator's auth "
    "callout (its key: CA_DIR/nats-callout.seed, created if missing); no rerun or reload "
    "per enrollment.",
)
@click.option(
    "--node",
    "nodes",
    multiple=True,
    metavar="NAME=HOST[:PORT[:CLUSTER_PORT[:LEAF_PORT]]]",
    help="nats: a node of a cluster (repeat, 3 or more survive a node's failure): one "
    "directory per node under --out, routes between them [ports: 4222, 6222, 7422].",
)
@click.option(
    "--site",
    "sites",
    multiple=True,
    metavar="NAME",
    help="nats, with --node: a site whose leaf node the cluster admits (repeat).",
)
@click.option(
    "--leaf",
    "leaf_site",
    default=None,
    metavar="SITE",
    help="nats: write SITE's leaf node (its agents' server, linked to the hub's --hub URLs).",
)
@click.option(
    "--hub",
    "hub",
    multiple=True,
    metavar="URL",
    help="nats, with --leaf: a core node's leaf URL, tls://host:7422 (repeat: every node).",
)
def broker_config(
    broker: str,
    ca_dir: Path,
    out_dir: Path,
    port: int | None,
    host: str,
    agents: tuple[str, ...],
    aggregator: str | None,
    server_names: tuple[str, ...],
    mosquitto_user: str | None,
    reload_pid: int | None,
    auth_callout: bool,
    nodes: tuple[str, ...],
    sites: tuple[str, ...],
    leaf_site: str | None,
    hub: tuple[str, ...],
) -> None:
    """Write a locked-down BROKER config: TLS with client certificates of the federation's
    CA, per-agent access rules, an enroll-only identity, and revocation."""
    from agent.identity.ca import load_ca
    from agent.identity.registry import REGISTRY_FILE
    from agent.lockdown import Members, members_from_registry, reload, write_broker_config
    from agent.lockdown.members import DEFAULT_AGGREGATOR
    from agent.lockdown.nats_jwt import (
        CALLOUT_SEED,
        SYSTEM_SEED,
        load_or_create_issuer,
        load_or_create_system_user,
        public_key,
    )

    if auth_callout and broker != "nats":
        raise click.UsageError("--auth-callout is for nats only")
    ca = load_ca(ca_dir)
    issuer = public_key(load_or_create_issuer(ca_dir / CALLOUT_SEED)) if auth_callout else None
    system = public_key(load_or_create_system_user(ca_dir / SYSTEM_SEED)) if auth_callout else None
    registry = ca_dir / REGISTRY_FILE
    if registry.is_file():
        members = members_from_registry(registry, aggregator=aggregator, agents=agents)
    else:
        members = Members(aggregator or DEFAULT_AGGREGATOR, agents)
    if nodes or sites or leaf_site or hub:
        from agent.cli.broker_topology import write_topology

        if broker != "nats":
            raise click.UsageError("--node, --site, --leaf and --hub are for nats only")
        written = write_topology(
            ca,
            out_dir,
            members,
            nodes=nodes,
            sites=sites,
            leaf_site=leaf_site,
            hub=hub,
            port=port or _DEFAULT_PORTS[broker],
            host=host,
            server_names=server_names,
            callout_issuer=issuer,
        )
        for files in written:
            click.echo(f"wrote {files.directory} ({files.url}); run: nats-server -c {files.config}")
        click.echo(
            f"  aggregator {members.aggregator}; {len(members.trainers)} trainers; "
            f"{len(members.revoked_ids)} revoked; bus_url = "
            + ",".join(files.url for files in written)
        )
        return
    files = write_broker_config(
        _KINDS[broker],
        ca,
        out_dir,
        members,
        port=port or _DEFAULT_PORTS[broker],
        host=host,
        server_names=server_names,
        mosquitto_user=mosquitto_user,
        callout_issuer=issuer,
        system_user=system,
    )
    click.echo(f"wrote {files.directory} for federation {ca.federation} ({files.url})")
    click.echo(
        f"  aggregator {members.aggregator}; enroll identity {members.enroll}; "
        f"{len(members.trainers)} trainers; {len(members.revoked_ids)} revoked; "
        f"{len(members.revoked_serials)} revoked certificates"
    )
    if broker == "mosquitto":
        _give_key_to_mosquitto(files.key_file, mosquitto_user)
    if issuer is not None:
        click.echo(
            f"  auth callout: issuer {issuer}; the aggregator with --ca-dir {ca_dir} serves it "
            "(enrollments and revocations need no rerun)"
        )
    if reload_pid is not None:
        reload(reload_pid)
        click.echo(f"  sent SIGHUP to {reload_pid}")
    else:
        click.echo(f"  run: {_RUN[broker].format(config=files.config)}")


def _give_key_to_mosquitto(key_file: Path, user: str | None) -> None:
    """As root, ``chown`` the server key to the account mosquitto drops to before it reads
    its files (``user``, default ``mosquitto``), so the printed command runs as written."""
    import os
    import pwd

    if os.geteuid() != 0 or user == "root":
        return
    name = user or "mosquitto"
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        click.echo(f"  note: no user {name!r}: mosquitto started as root cannot read {key_file}")
        return
    os.chown(key_file, account.pw_uid, account.pw_gid)
    click.echo(f"  {key_file.name} belongs to {name} (mosquitto drops root before reading it)")
