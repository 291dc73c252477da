"""Where a torch plugin computes: the device, and how many CPU threads it may take.

Device (option ``device``): ``"cpu"``; ``"cuda"``, a ``ConfigError`` at start (one line,
exit status 2, no traceback) without a usable CUDA device; ``"auto"``, CUDA when torch sees
a usable one and the CPU otherwise. *Usable*: ``torch.cuda.is_available()`` and a one-element
tensor made on it (a CUDA build whose driver is missing or too old, or a GPU the build has no
kernels for, fails there, not in the middle of the first fit). The probe's warnings (torch
warns when it finds no driver) are not shown. A CPU-only torch build (what fedbus's
``make install`` puts in .venv) always resolves ``auto`` to the CPU.

Threads (option ``threads``): torch's intra-op pool defaults to one thread per core, so N
agents on one machine would each start that many and oversubscribe the cores N times over.
``threads = 0`` (the default) gives each agent ``max(1, cpus // local_agents)``, where
``cpus`` is what this process may run on (``os.sched_getaffinity``) and ``local_agents`` is
how many agents share the machine (option ``local_agents``, which ``fedbus demo`` sets to its
agent count; default 1). A positive ``threads`` is used as is. The inter-op pool gets one
thread: a plugin's model runs one batch at a time.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Literal

import torch

from agent.errors import ConfigError

DeviceName = Literal["cpu", "cuda", "auto"]
DEVICES: tuple[DeviceName, ...] = ("cpu", "cuda", "auto")


def resolve_device(name: str) -> torch.device:
    """The ``torch.device`` option ``device`` names.

    Raises:
        ConfigError: an unknown name, or ``"cuda"`` without a usable CUDA device (the
            message says why and where the README tells how to install CUDA torch).
    """
    if name not in DEVICES:
        raise ConfigError(f"[plugin.options] device must be one of {list(DEVICES)}, got {name!r}")
    if name == "cpu":
        return torch.device("cpu")
    problem = cuda_problem()
    if problem is None:
        return torch.device("cuda")
    if name == "cuda":
        raise ConfigError(
            f"[plugin.options] device = 'cuda', but {problem}; set device = 'auto' or "
            "'cpu', or install a CUDA build of torch: see the 'PyTorch' section of "
            "fedbus's README"
        )
    return torch.device("cpu")


def cuda_problem() -> str | None:
    """Why this process cannot compute on CUDA, or None when it can (see the module
    docstring: available, and a tensor made on the device)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA initialization: found no NVIDIA driver"
        version = f"torch {torch.__version__}"
        if torch.version.cuda is None:
            return f"{version} is a CPU-only build"
        if not torch.cuda.is_available():
            return f"{version} sees no CUDA device (no GPU, or no NVIDIA driver)"
        try:
            torch.zeros(1, device="cuda")
        except (RuntimeError, AssertionError) as exc:  # no kernel image, driver too old, ...
            first = str(exc).splitlines()[0] if str(exc) else repr(exc)
            return f"{version} cannot compute on CUDA here: {first}"
    return None


def available_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def thread_count(threads: int, local_agents: int) -> int:
    """The intra-op threads for one agent: ``threads`` when > 0, else this machine's share."""
    if threads > 0:
        return threads
    return max(1, available_cpus() // max(1, local_agents))


def limit_threads(threads: int) -> None:
    """``torch.set_num_threads(threads)``, and one inter-op thread where torch still allows
    setting it (only before the first parallel work in the process)."""
    torch.set_num_threads(threads)
    # Refused once set, or once parallel work ran in this process: then it stays as it is.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
