"""``fedbus service install``: run a trainer or an aggregator as a systemd service.

The units (``fedbus-agent@.service``, ``fedbus-aggregator@.service``; the instance is the
federation id) come from ``systemd/`` in a source checkout or ``PREFIX/share/fedbus/systemd``
in a wheel install. ``install`` writes one into ``--unit-dir`` with ``ExecStart`` pointing
at ``--prefix``'s fedbus, lays out the config directory, moves an enrolled private key out
of the state directory, then runs ``systemctl daemon-reload`` and ``systemctl enable --now``
(``--dry-run``: writes the unit and prints every other step instead). Run it again after
``fedbus enroll``; it changes nothing that is already in place.

For ROLE ``agent`` or ``aggregator`` and federation FED::

    /etc/fedbus/FED/            0700, root's alone (ConfigurationDirectory=)
        ROLE.toml               the config; systemd passes it as the credential ROLE.toml
        ROLE.key                the private key (0600); passed as the credential ROLE.key
    /var/lib/fedbus/FED/ROLE/   the state (StateDirectory=; owned by the dynamic user)

The service reads both from ``$CREDENTIALS_DIRECTORY``, which for a system service is
``/run/credentials/fedbus-ROLE@FED.service``: a path fixed per unit, so the config can name
the key there (``key_file`` under ``[identity]``, and ``[tls]`` for TLS URLs) and no agent
code needs to know about systemd.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from agent.atomic import PRIVATE, PUBLIC, write_atomic, write_text
from agent.errors import ConfigError

if TYPE_CHECKING:
    import msgspec

    from agent.config import AgentConfig

#: Where the unit templates are: ``systemd/`` beside the ``agent`` package in a checkout
#: (and editable installs), ``<prefix>/share/fedbus/systemd`` in a wheel install
#: (``[tool.setuptools.data-files]`` in pyproject.toml), as ``agent.brokers.CONFIG_DIRS``.
UNIT_DIRS = (
    Path(__file__).resolve().parents[2] / "systemd",
    Path(sysconfig.get_path("data")) / "share" / "fedbus" / "systemd",
)
ROLES = ("agent", "aggregator")
#: What the shipped units say, and ``install`` replaces.
TEMPLATE_FEDBUS = "/opt/fedbus/venv/bin/fedbus"
TEMPLATE_CONFIG_ROOT = "%E/fedbus/"
DEFAULT_UNIT_DIR = Path("/etc/systemd/system")
DEFAULT_CONFIG_ROOT = Path("/etc/fedbus")
#: StateDirectory=fedbus/%i/ROLE; with DynamicUser= the data lives under private/ and
#: /var/lib/fedbus is a symlink farm, so ``fedbus enroll`` may have resolved into it.
STATE_ROOT = Path("/var/lib/fedbus")
PRIVATE_STATE_ROOT = Path("/var/lib/private/fedbus")
CREDENTIALS_ROOT = Path("/run/credentials")
#: ProtectHome=yes hides these from the service.
_HOME_DIRS = (Path("/home"), Path("/root"), Path("/run/user"))
#: Characters a path may have to go into a unit file unquoted (% is escaped as %%).
_UNIT_PATH_RE = re.compile(r"^/[A-Za-z0-9._+/@:%-]*$")

#: Runs one command line (``systemctl ...``); returns its exit status.
Runner = Callable[[Sequence[str]], int]
Echo = Callable[[str], None]
S = TypeVar("S", bound="msgspec.Struct")


@dataclass(frozen=True, slots=True)
class Layout:
    """Where everything of one ``fedbus-ROLE@FED`` service lives."""

    role: str
    federation: str
    config_root: Path = DEFAULT_CONFIG_ROOT

    @property
    def template(self) -> str:
        return f"fedbus-{self.role}@.service"

    @property
    def unit(self) -> str:
        return f"fedbus-{self.role}@{self.federation}.service"

    @property
    def config_dir(self) -> Path:
        return self.config_root / self.federation

    @property
    def config_path(self) -> Path:
        return self.config_dir / f"{self.role}.toml"

    @property
    def key_path(self) -> Path:
        return self.config_dir / f"{self.role}.key"

    @property
    def state_dir(self) -> Path:
        return STATE_ROOT / self.federation / self.role

    @property
    def credential_key(self) -> Path:
        """The key's path as the running service sees it."""
        return CREDENTIALS_ROOT / self.unit / f"{self.role}.key"


@dataclass(frozen=True, slots=True)
class KeyMove:
    """Moving an enrolled key into the config directory and pointing the config at it."""

    source: Path
    config: AgentConfig


def find_template(role: str) -> Path:
    """The shipped ``fedbus-ROLE@.service``.

    Raises:
        ConfigError: in none of ``UNIT_DIRS`` (a broken install).
    """
    name = f"fedbus-{role}@.service"
    for directory in UNIT_DIRS:
        if (directory / name).is_file():
            return directory / name
    raise ConfigError(f"no {name} in {' or '.join(map(str, UNIT_DIRS))}: reinstall fedbus")


def unit_path(path: Path, what: str) -> str:
    """``path`` written for a unit file (absolute, % escaped).

    Raises:
        ConfigError: relative, or with characters a unit file would need quoted.
    """
    text = str(path)
    if not _UNIT_PATH_RE.match(text):
        raise ConfigError(f"{what} {text!r} must be absolute, without spaces, quotes or $")
    return text.replace("%", "%%")


def render_unit(template: str, *, fedbus: Path, config_root: Path) -> str:
    """The shipped unit with ``ExecStart`` running ``fedbus`` and, when it is not
    /etc/fedbus, the config directories under ``config_root``."""
    if TEMPLATE_FEDBUS not in template or TEMPLATE_CONFIG_ROOT not in template:
        raise ConfigError(f"the unit template no longer names {TEMPLATE_FEDBUS}: reinstall")
    text = template.replace(TEMPLATE_FEDBUS, unit_path(fedbus, "--prefix"))
    if config_root != DEFAULT_CONFIG_ROOT:
        text = text.replace(TEMPLATE_CONFIG_ROOT, unit_path(config_root, "--config-dir") + "/")
    return text


def _canonical(path: Path) -> Path:
    """``/var/lib/private/fedbus/...`` (what ``resolve()`` gives once the service has run) as
    ``/var/lib/fedbus/...``, the path the service uses."""
    if path.is_relative_to(PRIVATE_STATE_ROOT):
        return STATE_ROOT / path.relative_to(PRIVATE_STATE_ROOT)
    return path


def _canonical_paths(struct: S, fields: tuple[str, ...]) -> S:
    """``struct`` with ``_canonical`` applied to ``fields`` (the same object when nothing
    changes, so that a default table stays out of the rewritten TOML)."""
    import msgspec

    changes = {}
    for name in fields:
        path = getattr(struct, name)
        if path is not None and _canonical(path) != path:
            changes[name] = _canonical(path)
    return msgspec.structs.replace(struct, **changes) if changes else struct


def plan_key_move(layout: Layout, config: AgentConfig) -> KeyMove | None:
    """Check that ``config`` can run in ``layout``'s sandbox; the key move it still needs
    (None: the config already reads the key from the credentials directory).

    Raises:
        ConfigError: another role or federation, a state directory other than the unit's,
            no identity, two different keys, or files the sandbox hides from the service.
    """
    import msgspec

    from agent.role import Role as RoleName

    source = layout.config_path
    want = RoleName.TRAINER if layout.role == "agent" else RoleName.AGGREGATOR
    if config.role is not want or config.federation != layout.federation:
        raise ConfigError(
            f"{source} configures a {config.role} of {config.federation!r}, not "
            f"{'a trainer' if layout.role == 'agent' else 'an aggregator'} of "
            f"{layout.federation!r}"
        )
    config = _canonical_paths(config, ("state_dir",))
    config = msgspec.structs.replace(
        config,
        identity=_canonical_paths(
            config.identity, ("cert_file", "key_file", "ca_file", "ca_dir", "registry")
        ),
        tls=_canonical_paths(config.tls, ("ca_file", "cert_file", "key_file")),
    )
    if config.state_dir != layout.state_dir:
        raise ConfigError(
            f"{source}: state_dir is {config.state_dir}, but the service can write only "
            f"{layout.state_dir} (enroll with --state-dir {layout.state_dir})"
        )
    ident, tls = config.identity, config.tls
    if ident.key_file is None:
        raise ConfigError(
            f"{source} has no [identity]: the service runs enrolled agents only "
            "(fedbus enroll writes the identity)"
        )
    for dir_key in ("ca_dir", "registry"):
        path = getattr(ident, dir_key)
        if path is not None and not path.is_relative_to(layout.state_dir):
            raise ConfigError(
                f"{source}: [identity] {dir_key} {path} must be in {layout.state_dir}: the "
                "aggregator writes the registry and CRL there, and the sandbox lets it "
                "write nowhere else"
            )
    keys = {p for p in (ident.key_file, tls.key_file) if p is not None}
    readable = [ident.cert_file, ident.ca_file, tls.ca_file, tls.cert_file]
    for path in [p for p in readable if p is not None]:
        hidden = [d for d in (layout.config_dir, *_HOME_DIRS) if path.is_relative_to(d)]
        if hidden:
            raise ConfigError(f"{source}: the service cannot read {path} (in {hidden[0]})")
    pending = keys - {layout.credential_key}
    if not pending:
        return None
    if len(pending) > 1:
        raise ConfigError(
            f"{source} names two private keys ({', '.join(map(str, sorted(pending)))}); "
            "the service takes one"
        )
    moved = layout.credential_key
    config = msgspec.structs.replace(
        config,
        identity=msgspec.structs.replace(ident, key_file=moved),
        tls=msgspec.structs.replace(tls, key_file=moved) if tls.key_file else tls,
    )
    return KeyMove(source=pending.pop(), config=config)


def _write_private(path: Path, data: bytes) -> None:
    """Atomically, 0600 from the moment it exists, synced before the rename."""
    write_atomic(path, data, mode=PRIVATE)


def apply_key_move(layout: Layout, move: KeyMove) -> None:
    """Copy the key into the config directory, rewrite the config, then delete the key from
    the state directory (in that order: an interruption leaves a copy, never none)."""
    try:
        key = move.source.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the private key {move.source}: {exc.strerror}") from exc
    _write_private(layout.key_path, key)
    _write_private(layout.config_path, move.config.to_toml())
    move.source.unlink()


def systemctl_commands(layout: Layout, *, enable: bool) -> list[list[str]]:
    """What ``install`` runs after writing the files."""
    commands = [["systemctl", "daemon-reload"]]
    if enable:
        # --no-block: READY=1 waits for the broker, which may be minutes away.
        commands.append(["systemctl", "enable", "--now", "--no-block", layout.unit])
    return commands


def run_systemctl(argv: Sequence[str]) -> int:
    """The real ``Runner``."""
    exe = shutil.which(argv[0])
    if exe is None:
        raise ConfigError(f"{argv[0]} not found: not a systemd system? (--dry-run prints all)")
    return subprocess.run([exe, *argv[1:]], check=False).returncode


def install(
    layout: Layout,
    *,
    fedbus: Path,
    unit_dir: Path,
    dry_run: bool,
    enable: bool,
    run: Runner,
    echo: Echo,
) -> None:
    """Install the unit for ``layout`` running ``fedbus``; see the module docstring.

    Raises:
        ConfigError: a config that cannot run as this service, a file that cannot be
            written, or a failed systemctl.
    """
    for problem in _executable_problems(fedbus):
        if not dry_run:
            raise ConfigError(problem)
        echo(f"warning: {problem}")
    try:
        _write_unit(layout, fedbus=fedbus, unit_dir=unit_dir, echo=echo)
        configured = _prepare_config(layout, dry_run=dry_run, echo=echo)
    except OSError as exc:
        raise ConfigError(f"{exc.filename}: {exc.strerror} (run as root?)") from exc
    would = "would " if dry_run else ""
    for argv in systemctl_commands(layout, enable=enable and configured):
        echo(f"{would}run: {' '.join(argv)}")
        if not dry_run and (status := run(argv)) != 0:
            raise ConfigError(f"{' '.join(argv)} failed (exit status {status})")
    name = layout.unit.removesuffix(".service")
    if not configured:
        echo(f"not enabled: {layout.config_path} does not exist yet; {_next_step(layout)}")
    elif enable:
        echo(f"follow it: systemctl status {name}; journalctl -u {name} -f")
    else:
        echo(f"start it: systemctl enable --now {name}")


def _executable_problems(fedbus: Path) -> list[str]:
    """Why the service could not run ``fedbus``: missing, or it or its interpreter (the #!
    line, symlinks followed) in a directory that ProtectHome=yes hides."""
    if not fedbus.is_file():
        return [f"{fedbus} does not exist (--prefix: the venv fedbus is installed in)"]
    with fedbus.open("rb") as script:
        first = script.readline(4096)
    paths = [fedbus]
    if first.startswith(b"#!") and first[2:].split():
        paths.append(Path(os.fsdecode(first[2:].split()[0])).resolve())
    return [
        f"the service cannot run {path}: ProtectHome=yes hides {home}; install fedbus in a "
        "venv of the system Python, e.g. /usr/bin/python3 -m venv /opt/fedbus/venv"
        for path in paths
        for home in _HOME_DIRS
        if path.is_relative_to(home)
    ]


def _write_unit(layout: Layout, *, fedbus: Path, unit_dir: Path, echo: Echo) -> None:
    """Render the template into ``unit_dir`` (atomically; untouched when up to date)."""
    text = find_template(layout.role).read_text()
    unit = render_unit(text, fedbus=fedbus, config_root=layout.config_root)
    target = unit_dir / layout.template
    if target.is_file() and target.read_text() == unit:
        echo(f"{target} is up to date (runs {fedbus})")
        return
    write_text(target, unit, mode=PUBLIC)
    echo(f"wrote {target} (runs {fedbus})")


def _prepare_config(layout: Layout, *, dry_run: bool, echo: Echo) -> bool:
    """Create the config directory and move an enrolled key in; whether a config exists."""
    from agent.config import AgentConfig

    would = "would " if dry_run else ""
    if not layout.config_dir.is_dir():
        echo(f"{would}create {layout.config_dir} (0700)")
        if not dry_run:
            layout.config_dir.mkdir(parents=True, mode=0o700)
    if not layout.config_path.is_file():
        return False
    move = plan_key_move(layout, AgentConfig.load(layout.config_path))
    if move is not None:
        echo(f"{would}move the private key {move.source} to {layout.key_path} (0600)")
        echo(f"{would}rewrite {layout.config_path}: key_file = {layout.credential_key}")
        if not dry_run:
            apply_key_move(layout, move)
    elif not layout.key_path.is_file():
        problem = f"{layout.config_path} expects its key in {layout.key_path}, which is missing"
        if not dry_run:
            raise ConfigError(problem)
        echo(f"warning: {problem}")
    return True


def _next_step(layout: Layout) -> str:
    if layout.role == "agent":
        return (
            "enroll this device, then run this command again:\n"
            f"  fedbus enroll --federation {layout.federation} --state-dir {layout.state_dir} "
            f"--config {layout.config_path} --agent-id ID --token-file FILE "
            "--ca-fingerprint SHA256 --bus-url URL --plugin NAME"
        )
    return (
        "create the CA in the state directory, write the config there (role = "
        f'"aggregator", state_dir = "{layout.state_dir}", [identity] ca_dir = '
        f'"{layout.state_dir}/ca"), then run this command again:\n'
        f"  fedbus ca init --federation {layout.federation} --dir {layout.state_dir}/ca"
    )


@click.group("service")
def service() -> None:
    """Run fedbus as a systemd service."""


@service.command("install")
@click.option("--federation", required=True, help="The federation id (the unit's instance).")
@click.option(
    "--role",
    type=click.Choice(ROLES),
    default="agent",
    show_default=True,
    help="A trainer (agent) or the aggregator.",
)
@click.option(
    "--prefix",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The virtual environment the service runs PREFIX/bin/fedbus from "
    "[default: this fedbus's, e.g. /opt/fedbus/venv].",
)
@click.option(
    "--unit-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_UNIT_DIR,
    show_default=True,
    help="Where to write the unit file.",
)
@click.option(
    "--config-dir",
    "config_root",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_CONFIG_ROOT,
    show_default=True,
    help="The parent of each federation's config directory.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Write only the unit file; print the other steps and systemctl commands.",
)
@click.option(
    "--no-enable",
    is_flag=True,
    help="Do not enable and start the service (daemon-reload still runs).",
)
def install_command(
    federation: str,
    role: str,
    prefix: Path | None,
    unit_dir: Path,
    config_root: Path,
    dry_run: bool,
    no_enable: bool,
) -> None:
    """Install fedbus-ROLE@FEDERATION.service: the unit, the config directory, the key as a
    systemd credential; then daemon-reload and enable --now. Safe to run again."""
    from agent.messages.bodies import NAME_PATTERN

    if not re.match(NAME_PATTERN, federation):
        raise ConfigError(f"federation {federation!r} must be 1-64 of [A-Za-z0-9_-]")
    venv = Path(sys.prefix) if prefix is None else prefix
    install(
        Layout(role, federation, config_root.absolute()),
        fedbus=venv.absolute() / "bin" / "fedbus",
        unit_dir=unit_dir,
        dry_run=dry_run,
        enable=not no_enable,
        run=run_systemctl,
        echo=click.echo,
    )
