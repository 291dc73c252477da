"""Where a torch plugin computes: the device, and how many CPU threads it may take.

Device (option ``device``): ``"cpu"``; ``"cuda"`` (an error without a usable CUDA device);
``"auto"``, CUDA when ``torch.cuda.is_available()`` and CPU otherwise. A CPU-only torch build
(what fedbus's ``make install`` puts in .venv) always resolves ``auto`` to the CPU.

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
from typing import Literal

import torch

from agent.errors import PluginError

DeviceName = Literal["cpu", "cuda", "auto"]
DEVICES: tuple[DeviceName, ...] = ("cpu", "cuda", "auto")


def resolve_device(name: str) -> torch.device:
    """The ``torch.device`` option ``device`` names.

    Raises:
        PluginError: an unknown name, or ``"cuda"`` without a usable CUDA device.
    """
    if name not in DEVICES:
        raise PluginError(f"option 'device' must be one of {list(DEVICES)}, got {name!r}")
    cuda = torch.cuda.is_available()
    if name == "cuda" and not cuda:
        raise PluginError(
            "option device = 'cuda' but torch sees no CUDA device "
            f"(torch {torch.__version__}; a CPU build? see fedbus-torch's README)"
        )
    return torch.device("cuda" if name != "cpu" and cuda else "cpu")


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
