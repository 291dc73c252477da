"""A fleet spread over a few OS processes, so every core works: each process is one
``fedbus fleet run --processes 1 CONFIG...`` (``agent.fleet.members.Fleet``) over its share
of the configs. Started, watched, killed and stopped here (by ``fedbus fleet run`` and the
demo).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

from agent.children import die_with_parent

T = TypeVar("T")


#: One BLAS thread per fleet process: many members each calling a BLAS that starts a
#: thread per core oversubscribe the cores (measured, 50 digits-mlp members with d = 100k:
#: round 1 failed its SecAgg+ deadlines with OpenBLAS's default, took 4.5 s with 1).
BLAS_THREADS = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def single_threaded_blas(environ: MutableMapping[str, str]) -> None:
    """Set ``BLAS_THREADS`` in ``environ`` where the user has not set them (before numpy
    is imported, for ``os.environ``)."""
    for name, value in BLAS_THREADS.items():
        environ.setdefault(name, value)


def default_processes() -> int:
    """One fleet process per CPU this process may run on."""
    return max(1, len(os.sched_getaffinity(0)))


def spread(items: Sequence[T], parts: int) -> list[list[T]]:
    """``items`` cut into ``min(parts, len(items))`` contiguous shares whose sizes differ by
    at most one (the first shares the larger)."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(list(items[start:end]))
        start = end
    return out


@dataclass
class FleetProcess:
    """One fleet OS process and its log file.

    Attributes:
        name: e.g. ``fleet-0``.
        agent_ids: the members it runs.
    """

    name: str
    agent_ids: tuple[str, ...]
    process: subprocess.Popen[bytes]
    log_path: Path | None
    log_file: IO[bytes] | None
    killed_on_purpose: bool = False

    def kill(self) -> None:
        """SIGKILL: every member drops out at once, as devices losing power would."""
        self.killed_on_purpose = True
        if self.process.poll() is None:
            self.process.kill()


def start_fleet_process(
    name: str,
    configs: Sequence[Path],
    agent_ids: Sequence[str],
    log_path: Path | None,
    *,
    ramp: float = 0.0,
) -> FleetProcess:
    """Start ``python -m agent fleet run --processes 1 [--ramp S] CONFIG...`` with output to
    ``log_path`` (None: this process's stdout/stderr); it dies with this process
    (``PR_SET_PDEATHSIG``)."""
    log_file = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = log_path.open("wb")
    args = [sys.executable, "-m", "agent", "fleet", "run", "--processes", "1"]
    args += ["--ramp", str(ramp), *map(str, configs)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    single_threaded_blas(env)
    process = subprocess.Popen(
        args,
        stdout=log_file,
        stderr=None if log_file is None else subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # Ctrl-C reaches the parent, which stops us
        preexec_fn=die_with_parent,  # noqa: PLW1509 - one prctl call, no locks or threads
    )
    return FleetProcess(name, tuple(agent_ids), process, log_path, log_file)


def start_fleets(
    configs: Sequence[tuple[str, Path]],
    log_dir: Path | None,
    *,
    processes: int,
    ramp: float = 0.0,
) -> list[FleetProcess]:
    """``configs`` (agent id, config file) spread over ``processes`` fleet processes,
    logging to ``log_dir/fleet-N.log`` (None: to this process's output)."""
    fleets = []
    for i, share in enumerate(spread(configs, processes)):
        fleets.append(
            start_fleet_process(
                f"fleet-{i}",
                [path for _, path in share],
                [agent for agent, _ in share],
                None if log_dir is None else log_dir / f"fleet-{i}.log",
                ramp=ramp,
            )
        )
    return fleets


def stop_fleets(fleets: Sequence[FleetProcess], *, grace: float = 10.0) -> dict[str, int]:
    """SIGTERM every running fleet process, SIGKILL those still up after ``grace`` s; reap
    all. Returns each process's exit code by name."""
    for f in fleets:
        if f.process.poll() is None:
            f.process.send_signal(signal.SIGTERM)
    codes: dict[str, int] = {}
    deadline = time.monotonic() + grace
    for f in fleets:
        try:
            codes[f.name] = f.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            f.process.kill()
            codes[f.name] = f.process.wait()
        if f.log_file is not None:
            f.log_file.close()
    return codes
