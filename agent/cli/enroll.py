"""``fedbus enroll bus|csr|import``: give this device its certificate and a trainer config
(``agent.identity.install``). One subcommand per mode; ``fedbus enroll OPTIONS`` without a
mode is ``fedbus enroll bus OPTIONS``, the usual way.

- ``bus``: over the bus with a one-time token; the key is made here and never leaves.
- ``csr OUT``: air-gapped, step 1: a key and a CSR; the operator signs it with
  ``fedbus ca sign``.
- ``import CERT``: air-gapped, step 2: install the signed certificate.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from agent.errors import ConfigError

if TYPE_CHECKING:
    from agent.identity.install import DeviceSetup, Installed

F = TypeVar("F", bound=Callable[..., Any])
#: The old mode flags, now subcommands (named in the error that a flag gets).
_RENAMED = {"--offline-csr": "csr", "--import-cert": "import"}


class _EnrollGroup(click.Group):
    """Runs ``bus`` when the first argument is an option rather than a mode."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        for flag, mode in _RENAMED.items():
            if any(a == flag or a.startswith(f"{flag}=") for a in args):
                raise click.UsageError(f"{flag} is now a mode: fedbus enroll {mode} ...", ctx)
        if args and args[0].startswith("-") and args[0] not in ctx.help_option_names:
            args = ["bus", *args]
        return super().parse_args(ctx, args)


@click.group("enroll", cls=_EnrollGroup)
def enroll() -> None:
    """Get this device a certificate: over the bus with a one-time token (`bus`, the default:
    `fedbus enroll --federation ...`), or offline (`csr`, then `import`). Writes the key
    (0600), certificate and CA under STATE_DIR/identity/ and a trainer config at --config."""
    from agent.logs import configure_logging

    configure_logging(level="error", fmt="console", stream=sys.stderr)


def _device_options(command: F) -> F:
    """The options of the modes that write the trainer's config (``DeviceSetup``)."""
    options = [
        click.option(
            "--ca-fingerprint",
            required=True,
            help="SHA-256 of the federation CA certificate (pins it).",
        ),
        click.option("--bus-url", required=True, help="The broker (mqtt[s]://, nats://, tls://)."),
        click.option(
            "--state-dir",
            required=True,
            type=click.Path(file_okay=False, path_type=Path),
            help="The agent's state directory; the identity goes in its identity/.",
        ),
        click.option(
            "--config",
            "config_path",
            required=True,
            type=click.Path(dir_okay=False, path_type=Path),
            help="Where to write the agent's config (TOML).",
        ),
        click.option(
            "--plugin", "plugin_name", required=True, help="The plugin the agent trains with."
        ),
        click.option(
            "--plugin-option",
            "-o",
            "plugin_options",
            multiple=True,
            metavar="KEY=VALUE",
            help="A [plugin.options] entry (VALUE read as JSON when it parses); repeatable.",
        ),
        click.option(
            "--tls-ca",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="CA that verifies the broker (TLS URLs).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@enroll.command("bus")
@click.option("--federation", required=True, help="The federation id.")
@click.option("--agent-id", required=True, help="This device's agent id (the token names it).")
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
@_device_options
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
def enroll_bus(
    federation: str,
    agent_id: str,
    token: str | None,
    token_file: Path | None,
    ca_fingerprint: str,
    bus_url: str,
    state_dir: Path,
    config_path: Path,
    plugin_name: str,
    plugin_options: tuple[str, ...],
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    timeout: float,
) -> None:
    """Over the bus: send a CSR for a key made here, with the one-time token, to the
    aggregator's enrollment service, and install the certificate it answers."""
    import asyncio

    from agent.identity.install import enroll_online

    setup = _setup(bus_url, state_dir, config_path, plugin_name, plugin_options, tls_ca)
    installed = asyncio.run(
        enroll_online(
            setup,
            _read_token(token, token_file),
            federation=federation,
            agent_id=agent_id,
            ca_fingerprint=ca_fingerprint,
            tls_cert=tls_cert,
            tls_key=tls_key,
            timeout=timeout,
        )
    )
    _done(installed)


@enroll.command("csr")
@click.argument("out", metavar="OUT.csr", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--federation", required=True, help="The federation id.")
@click.option("--agent-id", required=True, help="This device's agent id.")
@click.option(
    "--state-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The agent's state directory; the key goes in its identity/.",
)
def enroll_csr(out: Path, federation: str, agent_id: str, state_dir: Path) -> None:
    """Air-gapped, step 1: write only the key (0600; reused if present) and a CSR to OUT."""
    from agent.identity.install import write_offline_csr

    written = write_offline_csr(out, federation=federation, agent_id=agent_id, state_dir=state_dir)
    if written.new_key:
        click.echo(f"wrote a new key to {written.key_path} (0600; it never leaves this device)")
    else:
        click.echo(f"reusing the key in {written.key_path}")
    click.echo(f"wrote the CSR for {agent_id!r} of {federation!r} to {out}")
    click.echo(
        f"next: on the CA host, fedbus ca sign {out.name} --dir CA_DIR --out CERT.pem; "
        "then here, fedbus enroll import CERT.pem --ca-file ca.pem "
        "--ca-fingerprint HEX --state-dir ... --config ... --bus-url ... --plugin ..."
    )


@enroll.command("import")
@click.argument(
    "cert_path", metavar="CERT.pem", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--ca-file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The CA certificate (checked against the fingerprint).",
)
@_device_options
@click.option("--federation", help="Check that the certificate is for this federation.")
@click.option("--agent-id", help="Check that the certificate names this agent id.")
def enroll_import(
    cert_path: Path,
    ca_file: Path,
    ca_fingerprint: str,
    bus_url: str,
    state_dir: Path,
    config_path: Path,
    plugin_name: str,
    plugin_options: tuple[str, ...],
    tls_ca: Path | None,
    federation: str | None,
    agent_id: str | None,
) -> None:
    """Air-gapped, step 2: check CERT (from `fedbus ca sign`) against the pinned CA and the
    key from `fedbus enroll csr`, and install it."""
    from agent.identity.install import import_certificate

    setup = _setup(bus_url, state_dir, config_path, plugin_name, plugin_options, tls_ca)
    installed = import_certificate(
        setup,
        cert_path,
        ca_file=ca_file,
        ca_fingerprint=ca_fingerprint,
        agent_id=agent_id,
        federation=federation,
    )
    _done(installed)


def _setup(
    bus_url: str,
    state_dir: Path,
    config_path: Path,
    plugin_name: str,
    plugin_options: tuple[str, ...],
    tls_ca: Path | None,
) -> DeviceSetup:
    from agent.cli.plugins import parse_options
    from agent.identity.install import DeviceSetup

    try:
        options = parse_options(plugin_options)
    except click.BadParameter as exc:
        raise ConfigError(f"--plugin-option: {exc.message}") from exc
    return DeviceSetup(bus_url, state_dir, config_path, plugin_name, options, tls_ca)


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


def _done(installed: Installed) -> None:
    from agent.identity.install import CERT_FILE, DEVICE_CA_FILE, KEY_FILE

    who = installed.identity
    click.echo(
        f"enrolled {who.agent_id!r} in federation {who.federation!r} "
        f"(certificate serial {who.serial})"
    )
    click.echo(
        f"  wrote {installed.identity_dir}/{{{KEY_FILE} (0600), {CERT_FILE}, {DEVICE_CA_FILE}}}"
    )
    click.echo(f"  wrote {installed.config_path}")
    click.echo(f"next: fedbus run --config {installed.config_path}")
