"""``fedbus ca|token|agents|revoke``: the federation's identities, operator side, around a
CA directory (``--dir``, ``agent.identity.ca_dir``); ``fedbus enroll`` (the device side) is
``agent.cli.enroll``. Thin commands: the work is in ``agent.identity``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import click

from agent.cli.enroll import enroll

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``24h``, ``7d`` → seconds.

    Raises:
        ValueError: not a positive number with an optional s/m/h/d suffix.
    """
    match = _DURATION_RE.match(text)
    if match is None or float(match[1]) <= 0:
        raise ValueError(f"{text!r} is not a positive duration such as 90s, 15m, 24h or 7d")
    return float(match[1]) * _UNITS[match[2]]


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> float:
    """Click callback for ``--ttl``."""
    del ctx
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from exc


ca_dir_option = click.option(
    "--dir",
    "ca_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The CA directory (ca.pem, ca.key, registry.sqlite, crl.pem).",
)


def _when(value: dt.datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


# -- fedbus ca ---------------------------------------------------------------------------


@click.group("ca")
def ca_group() -> None:
    """The federation's certificate authority (aggregator host)."""


@ca_group.command("init")
@click.option("--federation", required=True, help="The federation id.")
@ca_dir_option
@click.option(
    "--aggregator-id",
    default="aggregator",
    show_default=True,
    help="The aggregator's agent id (CN of its certificate).",
)
@click.option(
    "--valid-days",
    default=3650,
    show_default=True,
    type=click.IntRange(min=1),
    help="Validity of the CA certificate.",
)
def ca_init(federation: str, ca_dir: Path, aggregator_id: str, valid_days: int) -> None:
    """Create the CA, the registry, the aggregator's identity and the shared enroll identity
    in --dir. Refuses to touch a directory that already holds a CA."""
    from agent.identity.ca_dir import (
        AGGREGATOR_CERT,
        AGGREGATOR_KEY,
        CA_CERT,
        CA_KEY,
        ENROLL_CERT,
        ENROLL_ID,
        ENROLL_KEY,
        init_ca_dir,
    )
    from agent.identity.registry import CRL_FILE, REGISTRY_FILE

    authority = init_ca_dir(ca_dir, federation, aggregator_id=aggregator_id, valid_days=valid_days)
    fp = authority.fingerprint
    click.echo(f"created the CA of federation {federation!r} in {ca_dir}/")
    click.echo(f"  CA fingerprint (SHA-256): {fp}")
    click.echo(
        f"  {CA_CERT}, {CA_KEY} (0600: keep it secret and backed up), {REGISTRY_FILE}, {CRL_FILE}"
    )
    click.echo(f"  {AGGREGATOR_CERT}/{AGGREGATOR_KEY}: the aggregator ({aggregator_id!r})")
    click.echo(f"  {ENROLL_CERT}/{ENROLL_KEY}: the shared enroll-only identity ({ENROLL_ID!r})")
    click.echo("give each device, out of band:")
    click.echo("  - the CA fingerprint above (it pins the CA: --ca-fingerprint)")
    click.echo(f"  - a one-time token: fedbus token create --agent-id ID --dir {ca_dir}")
    click.echo(
        f"  - on a locked-down broker: {CA_CERT}, {ENROLL_CERT} and {ENROLL_KEY} "
        "(--tls-ca/--tls-cert/--tls-key)"
    )
    click.echo("then on the device:")
    click.echo(
        f"  fedbus enroll --federation {federation} --agent-id ID --token-file FILE "
        f"--ca-fingerprint {fp} --bus-url URL --state-dir DIR --config PATH "
        "--plugin NAME"
    )


@ca_group.command("fingerprint")
@ca_dir_option
def ca_fingerprint(ca_dir: Path) -> None:
    """Print the CA fingerprint (SHA-256 of ca.pem's DER) that devices pin with
    --ca-fingerprint; reads only the certificate, never the key."""
    from agent.identity.ca_dir import CA_CERT
    from agent.identity.certificates import fingerprint
    from agent.identity.pem import load_certificate

    click.echo(fingerprint(load_certificate(ca_dir / CA_CERT)))


@ca_group.command("sign")
@click.argument(
    "csr_path", metavar="CSR.pem", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@ca_dir_option
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the certificate (PEM).",
)
@click.option(
    "--role", default="trainer", show_default=True, type=click.Choice(["trainer", "aggregator"])
)
@click.option("--valid-days", default=365, show_default=True, type=click.IntRange(min=1))
def ca_sign(csr_path: Path, ca_dir: Path, out: Path, role: str, valid_days: int) -> None:
    """Sign a device's CSR offline (air-gapped enrollment) and record it in the registry.
    The device finishes with `fedbus enroll import`."""
    from agent.identity.ca_dir import CA_CERT, sign_offline
    from agent.identity.pem import write_pem
    from agent.role import Role

    signed = sign_offline(ca_dir, csr_path, role=Role(role), valid_days=valid_days)
    identity, cert, superseded = signed.identity, signed.cert, signed.superseded
    write_pem(out, cert)
    click.echo(
        f"signed {identity.agent_id!r} ({identity.role}) of {identity.federation!r}: "
        f"serial {cert.serial_number}, wrote {out}"
    )
    if superseded:
        click.echo(f"its previous certificate(s) {superseded} are revoked; reload the brokers' CRL")
    click.echo(
        f"give the device {out} and {ca_dir / CA_CERT} (fingerprint {signed.ca_fingerprint})"
    )


# -- fedbus token / agents / revoke --------------------------------------------------------


@click.group("token")
def token_group() -> None:
    """One-time enrollment tokens."""


@token_group.command("create")
@click.option("--agent-id", required=True, help="The agent id the token enrolls.")
@click.option(
    "--ttl",
    default="24h",
    show_default=True,
    callback=_duration,
    help="How long the token is valid: seconds, or with an s/m/h/d suffix.",
)
@ca_dir_option
def token_create(agent_id: str, ttl: float, ca_dir: Path) -> None:
    """Print a new single-use token for --agent-id (only its SHA-256 is stored)."""
    from agent.identity.ca_dir import create_token

    click.echo(create_token(ca_dir, agent_id, ttl))


@click.group("agents")
def agents_group() -> None:
    """Registered identities."""


@agents_group.command("list")
@ca_dir_option
@click.option("--json", "as_json", is_flag=True, help="A JSON array (serials as strings).")
def agents_list(ca_dir: Path, as_json: bool) -> None:
    """List every identity: id, role, status, enrolled at, last seen, revoked at, and when
    its certificate expires."""
    from agent.identity.ca_dir import registry_path
    from agent.identity.registry import Registry

    with Registry.open(registry_path(ca_dir)) as registry:
        rows = registry.agents()
    records: list[dict[str, str | None]] = [
        {
            "agent_id": r.agent_id,
            "role": str(r.role),
            "status": str(r.status),
            "serial": str(r.serial),
            "fingerprint": r.fingerprint,
            "enrolled_at": _when(r.enrolled_at),
            "last_seen": _when(r.last_seen),
            "revoked_at": _when(r.revoked_at),
            "expires_at": _when(r.expires_at),
        }
        for r in rows
    ]
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    header = ("AGENT", "ROLE", "STATUS", "ENROLLED AT", "LAST SEEN", "REVOKED AT", "EXPIRES AT")
    keys = ("agent_id", "role", "status", "enrolled_at", "last_seen", "revoked_at", "expires_at")
    table = [header, *[tuple(r[k] or "-" for k in keys) for r in records]]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@click.command("revoke")
@click.argument("agent_id")
@ca_dir_option
def revoke(agent_id: str, ca_dir: Path) -> None:
    """Revoke AGENT_ID: the registry refuses it from now on and crl.pem lists its
    certificates. The brokers must then reload (see the printed steps)."""
    from agent.identity.ca_dir import revoke_agent
    from agent.identity.registry import CRL_FILE

    serials = revoke_agent(ca_dir, agent_id)
    click.echo(f"revoked {agent_id!r}: certificate serial(s) {', '.join(map(str, serials))}")
    click.echo(f"wrote {ca_dir / CRL_FILE}; the aggregator refuses its messages from now on")
    click.echo("next, so the brokers refuse it too (regenerate their configs and reload them):")
    click.echo(
        f"  fedbus broker-config mosquitto|nats --ca-dir {ca_dir} --out BROKER_DIR "
        "--reload-pid BROKER_PID"
    )
    click.echo(
        "  mosquitto rereads its CRL and ACL on SIGHUP (the agent cannot reconnect, and an open"
        " session loses every right); nats-server drops the agent's user and disconnects it"
    )


#: The commands ``agent.cli.main`` registers.
COMMANDS = (ca_group, token_group, agents_group, revoke, enroll)
