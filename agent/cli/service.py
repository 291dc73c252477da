"""``fedbus service install``: run a trainer or an aggregator as a systemd service.

The units (``fedbus-agent@.service``, ``fedbus-aggregator@.service``; the instance is the
federation id) come from ``systemd/`` in a source checkout or ``PREFIX/share/fedbus/systemd``
in a wheel install. ``install`` writes one into ``--unit-dir`` with ``ExecStart`` pointing
at ``--prefix``'s fedbus (``agent.cli.units``: the layout and the rendering), lays out the
config directory, moves an enrolled private key out of the state directory
(``agent.cli.keymove``), then runs ``systemctl daemon-reload`` and ``systemctl enable --now``
(``--dry-run``: writes the unit and prints every other step instead). Run it again after
``fedbus enroll``; it changes nothing that is already in place.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import click

from agent.cli.keymove import apply_key_move, plan_key_move
from agent.cli.units import (
    DEFAULT_CONFIG_ROOT,
    DEFAULT_UNIT_DIR,
    HOME_DIRS,
    UNIT_ROLES,
    Echo,
    Layout,
    write_unit,
)
from agent.errors import ConfigError
from agent.role import Role

#: Runs one command line (``systemctl ...``); returns its exit status.
Runner = Callable[[Sequence[str]], int]


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
    for problem in _executable_problems(fedbus, echo=echo):
        if not dry_run:
            raise ConfigError(problem)
        echo(f"warning: {problem}")
    try:
        write_unit(layout, fedbus=fedbus, unit_dir=unit_dir, echo=echo)
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


def _executable_problems(fedbus: Path, *, echo: Echo) -> list[str]:
    """Why the service could not run ``fedbus``: missing, or it, its interpreter (the #!
    line, symlinks followed) or the ``agent`` package that interpreter imports (an editable
    install of a checkout, say) in a directory that ProtectHome=yes hides."""
    if not fedbus.is_file():
        return [f"{fedbus} does not exist (--prefix: the venv fedbus is installed in)"]
    with fedbus.open("rb") as script:
        first = script.readline(4096)
    paths = [fedbus]
    interpreter = None
    if first.startswith(b"#!") and first[2:].split():
        interpreter = Path(os.fsdecode(first[2:].split()[0])).resolve()
        paths.append(interpreter)
    problems = [
        f"the service cannot run {path}: ProtectHome=yes hides {home}; install fedbus in a "
        "venv of the system Python, e.g. /usr/bin/python3 -m venv /opt/fedbus/venv"
        for path in paths
        for home in HOME_DIRS
        if path.is_relative_to(home)
    ]
    if interpreter is None or problems:
        return problems
    package = _package_dir(interpreter)
    if package is None:
        echo(f"warning: {interpreter} cannot import the agent package: the service would fail")
        return problems
    return [
        f"the service cannot import fedbus: {interpreter} imports it from {package}, which "
        f"ProtectHome=yes hides ({home}); an editable install of a checkout there? Install "
        "fedbus non-editable (pip install .) or from a checkout outside /root and /home"
        for home in HOME_DIRS
        if package.is_relative_to(home)
    ]


def _package_dir(interpreter: Path) -> Path | None:
    """Where ``interpreter`` imports the ``agent`` package from (its .pth files, editable
    installs included), or None when it cannot (or does not answer within 30 s)."""
    code = "import agent, os; print(os.path.dirname(os.path.realpath(agent.__file__)))"
    try:
        done = subprocess.run(
            [str(interpreter), "-I", "-c", code],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    where = done.stdout.strip()
    return Path(where) if done.returncode == 0 and where else None


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
    if layout.role is Role.TRAINER:
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
    type=click.Choice(list(UNIT_ROLES)),
    default="agent",
    show_default=True,
    callback=lambda _ctx, _param, word: UNIT_ROLES[word],
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
    role: Role,
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
