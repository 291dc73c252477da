"""``fedbus fleet tokens|enroll|run``: many simulated devices on one machine, against any
broker (``agent.fleet``). Thin commands: the work is in ``agent.fleet``.

- ``tokens``: one-time tokens for N device ids, one ``AGENT_ID TOKEN`` line each;
- ``enroll``: every device of a tokens file enrolled over the bus from this one process;
- ``run``: their trainers, many per process, over a few processes (default one per CPU).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from agent.cli.identity import _duration, ca_dir_option
from agent.errors import ConfigError

if TYPE_CHECKING:
    from agent.config import AgentConfig


@click.group("fleet")
def fleet() -> None:
    """Simulate a fleet of devices: many real trainers per process (see README, "A fleet
    of simulated devices")."""


@fleet.command("tokens")
@ca_dir_option
@click.option("--count", required=True, type=click.IntRange(min=1), help="Devices.")
@click.option("--prefix", default="device-", show_default=True, help="Agent id prefix.")
@click.option("--ttl", default="24h", show_default=True, callback=_duration)
def fleet_tokens(ca_dir: Path, count: int, prefix: str, ttl: float) -> None:
    """Print one `AGENT_ID TOKEN` line per device PREFIX0000 ... (only hashes are stored).
    The output holds secrets: write it to a 0600 file."""
    from agent.identity.ca_dir import create_tokens

    width = max(4, len(str(count - 1)))
    ids = [f"{prefix}{i:0{width}d}" for i in range(count)]
    for agent_id, token in create_tokens(ca_dir, ids, ttl).items():
        click.echo(f"{agent_id} {token}")


@fleet.command("enroll")
@click.option("--federation", required=True)
@click.option("--ca-fingerprint", required=True, help="SHA-256 of the federation CA (pins it).")
@click.option("--bus-url", required=True, help="The broker (mqtt[s]://, nats://, tls://).")
@click.option(
    "--tokens",
    "tokens_file",
    required=True,
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="`AGENT_ID TOKEN` lines (as `fedbus fleet tokens` prints; '-': stdin).",
)
@click.option(
    "--dir",
    "work",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Writes DIR/AGENT_ID.toml and the state directory DIR/AGENT_ID/ per device.",
)
@click.option("--plugin", "plugin_name", required=True)
@click.option("--plugin-option", "-o", "plugin_options", multiple=True, metavar="KEY=VALUE")
@click.option(
    "--index-option",
    metavar="KEY",
    help="Also set [plugin.options] KEY to the device's 0-based line in the tokens file "
    "(e.g. agent_index, for digits-mlp's shards).",
)
@click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(min=0.1))
@click.option("--concurrency", default=64, show_default=True, type=click.IntRange(min=1))
def fleet_enroll(
    federation: str,
    ca_fingerprint: str,
    bus_url: str,
    tokens_file: Path,
    work: Path,
    plugin_name: str,
    plugin_options: tuple[str, ...],
    index_option: str | None,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    timeout: float,
    concurrency: int,
) -> None:
    """Enroll every device of --tokens over the bus, concurrently, as `fedbus enroll` would
    one by one (a key made here per device, its token, the pinned CA). Exits 1 when any
    device was refused; the others are enrolled."""
    import asyncio

    from agent.cli.plugins import parse_options
    from agent.fleet.enroll import FleetDevice, enroll_fleet
    from agent.identity.install import DeviceSetup
    from agent.logs import configure_logging

    configure_logging(level="error", fmt="console", stream=sys.stderr)
    options = parse_options(plugin_options)
    devices = []
    for i, (agent_id, token) in enumerate(_read_tokens(tokens_file)):
        extra = {index_option: i} if index_option else {}
        setup = DeviceSetup(
            bus_url,
            work / agent_id,
            work / f"{agent_id}.toml",
            plugin_name,
            {**options, **extra},
            tls_ca,
        )
        devices.append(FleetDevice(agent_id, token, setup))
    started = time.perf_counter()
    result = asyncio.run(
        enroll_fleet(
            devices,
            federation=federation,
            ca_fingerprint=ca_fingerprint,
            tls_cert=tls_cert,
            tls_key=tls_key,
            timeout=timeout,
            concurrency=concurrency,
        )
    )
    seconds = time.perf_counter() - started
    for agent_id, exc in sorted(result.failed.items()):
        click.echo(f"{agent_id}: {exc}", err=True)
    click.echo(
        f"enrolled {len(result.installed)} of {len(devices)} devices in {seconds:.1f} s; "
        f"configs in {work}/"
    )
    if result.failed:
        sys.exit(1)


def _read_tokens(path: Path) -> list[tuple[str, str]]:
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read --tokens {path}: {exc.strerror}") from exc
    pairs = []
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) != 2:
            raise ConfigError(f"--tokens line {n}: expected `AGENT_ID TOKEN`")  # no secret
        pairs.append((fields[0], fields[1]))
    return pairs


@fleet.command("run")
@click.argument("configs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    help="Fleet processes to spread the trainers over  [default: one per CPU].",
)
@click.option(
    "--ramp",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds over which each process starts its trainers.",
)
@click.option(
    "--log-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write each process's log to LOG_DIR/fleet-N.log (default: this terminal).",
)
def fleet_run(
    configs: tuple[Path, ...], processes: int | None, ramp: float, log_dir: Path | None
) -> None:
    """Run the trainers of CONFIGS (trainer TOML files, or directories of them) until
    SIGTERM: each the same trainer as `fedbus run` would play, with its own connection,
    identity and plugin instance, many to a process. Exits 1 when a trainer failed."""
    from agent.fleet.processes import default_processes, single_threaded_blas

    single_threaded_blas(os.environ)  # before anything imports numpy
    from agent.fleet.members import config_files, load_configs

    files = config_files(configs)
    loaded = load_configs(files)  # every config checked before anything starts
    count = processes or default_processes()
    if count == 1:
        _run_here(loaded, ramp)
    else:
        pairs = [(c.agent_id, f) for c, f in zip(loaded, files, strict=True)]
        _run_spread(pairs, count, ramp, log_dir)


def _run_here(configs: list[AgentConfig], ramp: float) -> None:
    """One fleet process: every trainer in this event loop."""
    from agent.fleet.members import Fleet, raise_open_files
    from agent.logs import configure_logging
    from agent.node_base import run_until_signal

    first = configs[0].logging
    configure_logging(level=first.level, fmt=first.format)
    raise_open_files()
    members = Fleet(configs, ramp=ramp)
    run_until_signal(members.run())
    if members.failed:
        for agent_id, why in sorted(members.failed.items()):
            click.echo(f"{agent_id}: {why}", err=True)
        sys.exit(1)


def _run_spread(
    pairs: list[tuple[str, Path]], count: int, ramp: float, log_dir: Path | None
) -> None:
    """``count`` fleet processes; SIGTERM / Ctrl-C stops them all. Exits with the first
    non-zero status a process ended with."""
    from agent.fleet.members import raise_open_files
    from agent.fleet.processes import start_fleets, stop_fleets

    raise_open_files()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    fleets = start_fleets(pairs, log_dir, processes=count, ramp=ramp)
    click.echo(
        f"fedbus fleet: {len(pairs)} trainers in {len(fleets)} processes "
        f"(pids {' '.join(str(f.process.pid) for f in fleets)})",
        err=True,
    )
    try:
        while any(f.process.poll() is None for f in fleets):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        codes = stop_fleets(fleets)
        signal.signal(signal.SIGTERM, previous)
    bad = [code for code in codes.values() if code != 0]
    if bad:
        sys.exit(bad[0] if bad[0] > 0 else 1)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
