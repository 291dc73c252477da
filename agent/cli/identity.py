"""``fedbus ca|token|agents|revoke|enroll``: the federation's identities (DESIGN.md §6).

Operator side, on the aggregator host, around a CA directory (``--dir``)::

    ca.pem  ca.key (0600)            the federation CA (``fedbus ca init``)
    aggregator.pem  aggregator.key   the aggregator's identity
    enroll.pem  enroll.key           the shared enroll-only identity for unenrolled devices
    registry.sqlite                  agents, certificates, tokens (``agent.identity.registry``)
    crl.pem                          revoked certificates, for the brokers

Device side: ``fedbus enroll`` writes ``STATE_DIR/identity/{key.pem (0600), cert.pem, ca.pem}``
and a trainer config that ``fedbus run --config`` needs nothing else for.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from agent.atomic import write_atomic
from agent.errors import ConfigError, IdentityError

if TYPE_CHECKING:
    from cryptography import x509

    from agent.config import AgentConfig
    from agent.identity.pem import PrivateKey

#: Files of a CA directory besides the registry and the CRL.
CA_CERT, CA_KEY = "ca.pem", "ca.key"
AGGREGATOR_CERT, AGGREGATOR_KEY = "aggregator.pem", "aggregator.key"
ENROLL_CERT, ENROLL_KEY = "enroll.pem", "enroll.key"
ENROLL_ID = "enroll"
#: A device's identity files, under its state directory.
IDENTITY_DIR = "identity"
KEY_FILE, CERT_FILE, DEVICE_CA_FILE = "key.pem", "cert.pem", "ca.pem"
#: The broker's CA, when --tls-ca is not the federation CA.
BROKER_CA_FILE = "broker-ca.pem"

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


def _registry_path(ca_dir: Path) -> Path:
    from agent.identity.registry import REGISTRY_FILE

    path = ca_dir / REGISTRY_FILE
    if not path.is_file():
        raise IdentityError("unreadable", f"no registry at {path} (run `fedbus ca init` first)")
    return path


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
    from agent.identity import ca as x
    from agent.identity import pem
    from agent.identity.certificates import identity_of
    from agent.identity.registry import CRL_FILE, REGISTRY_FILE, Registry
    from agent.role import Role

    existing = [n for n in (CA_CERT, CA_KEY, REGISTRY_FILE) if (ca_dir / n).exists()]
    if existing:
        raise IdentityError(
            "ca_exists",
            f"{ca_dir} already holds a CA ({', '.join(existing)}); refusing to overwrite it "
            "(use another --dir)",
        )
    authority = x.init_ca(federation, valid_days=valid_days)
    aggregator_key, aggregator_cert = x.issue(authority, aggregator_id, role=Role.AGGREGATOR)
    enroll_key, enroll_cert = x.issue(authority, ENROLL_ID, role=Role.ENROLL)
    ca_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    x.save_ca(authority, ca_dir)
    pem.write_pem(ca_dir / AGGREGATOR_CERT, aggregator_cert)
    pem.write_private_key(ca_dir / AGGREGATOR_KEY, aggregator_key)
    pem.write_pem(ca_dir / ENROLL_CERT, enroll_cert)
    pem.write_private_key(ca_dir / ENROLL_KEY, enroll_key)
    with Registry.open(ca_dir / REGISTRY_FILE) as registry:
        for cert in (aggregator_cert, enroll_cert):
            registry.record_enrollment(identity_of(cert), cert)
    (ca_dir / REGISTRY_FILE).chmod(0o600)
    pem.write_pem(ca_dir / CRL_FILE, x.build_crl(authority, []))
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
    The device finishes with `fedbus enroll --import-cert`."""
    from cryptography import x509

    from agent.identity import ca as x
    from agent.identity.certificates import identity_of
    from agent.identity.pem import write_pem
    from agent.identity.registry import Registry, write_crl
    from agent.role import Role

    authority = x.load_ca(ca_dir)
    try:
        csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    except ValueError as exc:
        raise IdentityError("bad_csr", f"{csr_path} is not a PEM certificate request") from exc
    cert = x.sign_csr(authority, csr, role=Role(role), valid_days=valid_days)
    identity = identity_of(cert)
    with Registry.open(_registry_path(ca_dir)) as registry:
        superseded = registry.record_enrollment(identity, cert)
        if superseded:
            write_crl(ca_dir, registry)
    write_pem(out, cert)
    click.echo(
        f"signed {identity.agent_id!r} ({identity.role}) of {identity.federation!r}: "
        f"serial {cert.serial_number}, wrote {out}"
    )
    if superseded:
        click.echo(f"its previous certificate(s) {superseded} are revoked; reload the brokers' CRL")
    click.echo(
        f"give the device {out} and {ca_dir / CA_CERT} (fingerprint {authority.fingerprint})"
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
    from agent.identity.certificates import NAME_RE
    from agent.identity.registry import Registry
    from agent.role import Role

    if not NAME_RE.match(agent_id):
        raise IdentityError("bad_name", f"agent id {agent_id!r} must be 1-64 of [A-Za-z0-9_-]")
    with Registry.open(_registry_path(ca_dir)) as registry:
        row = registry.agent(agent_id)
        if row is not None and row.role is not Role.TRAINER:
            raise IdentityError(
                "role_conflict", f"{agent_id!r} is the {row.role} identity, not a device's id"
            )
        click.echo(registry.create_token(agent_id, ttl))


@click.group("agents")
def agents_group() -> None:
    """Registered identities."""


@agents_group.command("list")
@ca_dir_option
@click.option("--json", "as_json", is_flag=True, help="A JSON array (serials as strings).")
def agents_list(ca_dir: Path, as_json: bool) -> None:
    """List every identity: id, role, status, enrolled at, last seen, revoked at."""
    from agent.identity.registry import Registry

    with Registry.open(_registry_path(ca_dir)) as registry:
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
        }
        for r in rows
    ]
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    header = ("AGENT", "ROLE", "STATUS", "ENROLLED AT", "LAST SEEN", "REVOKED AT")
    keys = ("agent_id", "role", "status", "enrolled_at", "last_seen", "revoked_at")
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
    from agent.identity.registry import CRL_FILE, revoke_agent

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


# -- fedbus enroll -----------------------------------------------------------------------


@click.command("enroll")
@click.option("--federation", help="The federation id.")
@click.option("--agent-id", help="This device's agent id (the token names it).")
@click.option(
    "--token",
    envvar="FEDBUS_ENROLL_TOKEN",
    help="The one-time token (or env FEDBUS_ENROLL_TOKEN, or --token-file).",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A file holding the token ('-': stdin).",
)
@click.option("--ca-fingerprint", help="SHA-256 of the federation CA certificate (pins it).")
@click.option("--bus-url", help="The broker (mqtt[s]://, nats://, tls://).")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The agent's state directory; the identity goes in its identity/.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the agent's config (TOML).",
)
@click.option("--plugin", "plugin_name", help="The plugin the agent trains with.")
@click.option(
    "--plugin-option",
    "-o",
    "plugin_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="A [plugin.options] entry (VALUE read as JSON when it parses); repeatable.",
)
@click.option(
    "--tls-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CA that verifies the broker (TLS URLs).",
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The shared enroll identity's certificate, for a locked-down broker.",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The shared enroll identity's key.",
)
@click.option(
    "--timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds to wait in all (connect and reply).",
)
@click.option(
    "--offline-csr",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Air-gapped: write only the key and a CSR to this file.",
)
@click.option(
    "--import-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Air-gapped: install this certificate from `fedbus ca sign`.",
)
@click.option(
    "--ca-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="With --import-cert: the CA certificate (checked against the fingerprint).",
)
def enroll(
    federation: str | None,
    agent_id: str | None,
    token: str | None,
    token_file: Path | None,
    ca_fingerprint: str | None,
    bus_url: str | None,
    state_dir: Path | None,
    config_path: Path | None,
    plugin_name: str | None,
    plugin_options: tuple[str, ...],
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    timeout: float,
    offline_csr: Path | None,
    import_cert: Path | None,
    ca_file: Path | None,
) -> None:
    """Get this device a certificate: over the bus with a one-time token (the key is made
    here and never leaves), or offline (--offline-csr, then --import-cert). Writes the key
    (0600), certificate and CA under STATE_DIR/identity/ and a trainer config at --config."""
    from agent.logs import configure_logging

    configure_logging(level="error", fmt="console", stream=sys.stderr)
    given = {
        "--federation": federation,
        "--agent-id": agent_id,
        "--state-dir": state_dir,
        "--ca-fingerprint": ca_fingerprint,
        "--bus-url": bus_url,
        "--config": config_path,
        "--plugin": plugin_name,
        "--ca-file": ca_file,
    }

    def need(mode: str, *names: str) -> None:
        missing = [n for n in names if given[n] is None]
        if missing:
            raise ConfigError(f"fedbus enroll{mode} needs {', '.join(missing)}")

    if (offline_csr is not None) + (import_cert is not None) + (
        token is not None or token_file is not None
    ) > 1:
        raise ConfigError("give one of --token/--token-file, --offline-csr or --import-cert")
    if offline_csr is not None:
        need(" --offline-csr", "--federation", "--agent-id", "--state-dir")
        assert federation is not None  # need() checked them; for mypy
        assert agent_id is not None
        assert state_dir is not None
        _offline_csr(offline_csr, federation=federation, agent_id=agent_id, state_dir=state_dir)
        return
    need(
        "" if import_cert is None else " --import-cert",
        "--ca-fingerprint",
        "--bus-url",
        "--state-dir",
        "--config",
        "--plugin",
    )
    assert ca_fingerprint is not None
    assert bus_url is not None
    assert state_dir is not None
    assert config_path is not None
    assert plugin_name is not None
    options = _plugin_options(plugin_options)
    if import_cert is not None:
        need(" --import-cert", "--ca-file")
        assert ca_file is not None
        _import(
            import_cert,
            ca_file=ca_file,
            ca_fingerprint=ca_fingerprint,
            bus_url=bus_url,
            state_dir=state_dir,
            config_path=config_path,
            plugin=(plugin_name, options),
            agent_id=agent_id,
            federation=federation,
            tls_ca=tls_ca,
        )
        return
    need("", "--federation", "--agent-id")
    assert federation is not None
    assert agent_id is not None
    secret = _read_token(token, token_file)
    _online(
        secret,
        federation=federation,
        agent_id=agent_id,
        ca_fingerprint=ca_fingerprint,
        bus_url=bus_url,
        state_dir=state_dir,
        config_path=config_path,
        plugin=(plugin_name, options),
        tls=(tls_ca, tls_cert, tls_key),
        timeout=timeout,
    )


def _plugin_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    from agent.cli.plugins import parse_options

    try:
        return parse_options(pairs)
    except click.BadParameter as exc:
        raise ConfigError(f"--plugin-option: {exc.message}") from exc


def _read_token(token: str | None, token_file: Path | None) -> str:
    if token_file is not None:
        try:
            text = sys.stdin.read() if str(token_file) == "-" else token_file.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read --token-file {token_file}: {exc.strerror}") from exc
        token = text.strip()
    if not token:
        raise ConfigError(
            "fedbus enroll needs a token: --token, --token-file or FEDBUS_ENROLL_TOKEN"
        )
    return token


def _trainer_config(
    *,
    agent_id: str,
    federation: str,
    bus_url: str,
    state_dir: Path,
    plugin: tuple[str, dict[str, Any]],
    broker_ca: Path | None,
) -> AgentConfig:
    """The trainer's AgentConfig (validated), with [identity] and, for a TLS URL, [tls]."""
    from agent.bus.url import parse_broker_url
    from agent.config import AgentConfig, IdentityConfig, PluginConfig, TlsConfig
    from agent.role import Role

    state = state_dir.resolve()
    ident = state / IDENTITY_DIR
    tls = TlsConfig()
    if parse_broker_url(bus_url).tls:
        tls = TlsConfig(
            ca_file=broker_ca or ident / DEVICE_CA_FILE,
            cert_file=ident / CERT_FILE,
            key_file=ident / KEY_FILE,
        )
    config = AgentConfig(
        role=Role.TRAINER,
        agent_id=agent_id,
        federation=federation,
        bus_url=bus_url,
        state_dir=state,
        plugin=PluginConfig(name=plugin[0], options=plugin[1]),
        tls=tls,
        identity=IdentityConfig(
            cert_file=ident / CERT_FILE, key_file=ident / KEY_FILE, ca_file=ident / DEVICE_CA_FILE
        ),
    )
    return AgentConfig.parse(config.to_toml(), source="the generated config")


def _install(
    config: AgentConfig,
    *,
    key: PrivateKey,
    cert: x509.Certificate,
    ca_cert: x509.Certificate,
    config_path: Path,
    tls_ca: Path | None,
) -> Path:
    """Write the identity files and the config; returns the identity directory."""
    from agent.identity import pem as x

    ident = Path(config.state_dir) / IDENTITY_DIR
    ident.mkdir(parents=True, exist_ok=True, mode=0o700)
    x.write_private_key(ident / KEY_FILE, key)
    x.write_pem(ident / CERT_FILE, cert)
    x.write_pem(ident / DEVICE_CA_FILE, ca_cert)
    if config.tls.ca_file == ident / BROKER_CA_FILE and tls_ca is not None:
        write_atomic(ident / BROKER_CA_FILE, tls_ca.read_bytes())
    config_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(config_path, config.to_toml())
    return ident


def _broker_ca(tls_ca: Path | None, state_dir: Path, ca_pem: bytes | None) -> Path | None:
    """Where the running agent's [tls] ca_file points: the federation CA unless --tls-ca is
    another certificate (then a copy in identity/broker-ca.pem)."""
    if tls_ca is None or (ca_pem is not None and tls_ca.read_bytes() == ca_pem):
        return None
    return state_dir.resolve() / IDENTITY_DIR / BROKER_CA_FILE


def _online(
    token: str,
    *,
    federation: str,
    agent_id: str,
    ca_fingerprint: str,
    bus_url: str,
    state_dir: Path,
    config_path: Path,
    plugin: tuple[str, dict[str, Any]],
    tls: tuple[Path | None, Path | None, Path | None],
    timeout: float,
) -> None:
    import asyncio

    from cryptography.hazmat.primitives import serialization

    from agent.bus.url import TlsFiles
    from agent.identity.enrollment import enroll as enroll_over_bus
    from agent.identity.enrollment import normalize_fingerprint

    normalize_fingerprint(ca_fingerprint)  # fail before any network
    tls_ca, tls_cert, tls_key = tls
    files = TlsFiles(tls_ca, tls_cert, tls_key)
    # Validate everything we will write before touching the network; the broker CA path is
    # settled once the federation CA is known.
    _trainer_config(
        agent_id=agent_id,
        federation=federation,
        bus_url=bus_url,
        state_dir=state_dir,
        plugin=plugin,
        broker_ca=None,
    )
    result = asyncio.run(
        enroll_over_bus(
            bus_url,
            federation=federation,
            agent_id=agent_id,
            token=token,
            ca_fingerprint=ca_fingerprint,
            tls=None if files == TlsFiles() else files,
            timeout=timeout,
        )
    )
    ca_pem = result.ca_cert.public_bytes(serialization.Encoding.PEM)
    config = _trainer_config(
        agent_id=agent_id,
        federation=federation,
        bus_url=bus_url,
        state_dir=state_dir,
        plugin=plugin,
        broker_ca=_broker_ca(tls_ca, state_dir, ca_pem),
    )
    ident = _install(
        config,
        key=result.key,
        cert=result.cert,
        ca_cert=result.ca_cert,
        config_path=config_path,
        tls_ca=tls_ca,
    )
    _done(agent_id, federation, result.cert.serial_number, ident, config_path)


def _offline_csr(out: Path, *, federation: str, agent_id: str, state_dir: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    from agent.identity import ca as x
    from agent.identity import pem

    key_path = state_dir / IDENTITY_DIR / KEY_FILE
    if key_path.exists():
        key = pem.load_private_key(key_path)
        note = f"reusing the key in {key_path}"
    else:
        key = x.new_key()
        (state_dir / IDENTITY_DIR).mkdir(parents=True, exist_ok=True, mode=0o700)
        pem.write_private_key(key_path, key)
        note = f"wrote a new key to {key_path} (0600; it never leaves this device)"
    csr = x.build_csr(key, agent_id=agent_id, federation=federation)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, csr.public_bytes(serialization.Encoding.PEM))
    click.echo(note)
    click.echo(f"wrote the CSR for {agent_id!r} of {federation!r} to {out}")
    click.echo(
        f"next: on the CA host, fedbus ca sign {out.name} --dir CA_DIR --out CERT.pem; "
        "then here, fedbus enroll --import-cert CERT.pem --ca-file ca.pem "
        "--ca-fingerprint HEX --state-dir ... --config ... --bus-url ... --plugin ..."
    )


def _import(
    cert_path: Path,
    *,
    ca_file: Path,
    ca_fingerprint: str,
    bus_url: str,
    state_dir: Path,
    config_path: Path,
    plugin: tuple[str, dict[str, Any]],
    agent_id: str | None,
    federation: str | None,
    tls_ca: Path | None,
) -> None:
    from agent.identity import pem as x
    from agent.identity.enrollment import check_issued

    key_path = state_dir / IDENTITY_DIR / KEY_FILE
    if not key_path.is_file():
        raise IdentityError(
            "unreadable",
            f"no device key at {key_path}: run "
            "`fedbus enroll --offline-csr` with this --state-dir first",
        )
    key = x.load_private_key(key_path)
    cert = x.load_certificate(cert_path)
    ca_cert = x.load_certificate(ca_file)
    identity = check_issued(
        ca_cert,
        cert,
        key=key,
        ca_fingerprint=ca_fingerprint,
        agent_id=agent_id,
        federation=federation,
    )
    config = _trainer_config(
        agent_id=identity.agent_id,
        federation=identity.federation,
        bus_url=bus_url,
        state_dir=state_dir,
        plugin=plugin,
        broker_ca=_broker_ca(tls_ca, state_dir, ca_file.read_bytes()),
    )
    ident = _install(
        config, key=key, cert=cert, ca_cert=ca_cert, config_path=config_path, tls_ca=tls_ca
    )
    _done(identity.agent_id, identity.federation, cert.serial_number, ident, config_path)


def _done(agent_id: str, federation: str, serial: int, ident: Path, config_path: Path) -> None:
    click.echo(f"enrolled {agent_id!r} in federation {federation!r} (certificate serial {serial})")
    click.echo(f"  wrote {ident}/{{{KEY_FILE} (0600), {CERT_FILE}, {DEVICE_CA_FILE}}}")
    click.echo(f"  wrote {config_path}")
    click.echo(f"next: fedbus run --config {config_path}")


#: The commands ``agent.cli.main`` registers.
COMMANDS = (ca_group, token_group, agents_group, revoke, enroll)
