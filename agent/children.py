"""Child processes that cannot outlive the process that started them.

On Linux, ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` in the child asks the kernel to send it SIGTERM
when its parent dies, even by SIGKILL, so a killed demo or test run leaves no broker or agent
behind. Elsewhere it is a no-op; the parent's own cleanup still stops its children.
"""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """A ``subprocess.Popen(preexec_fn=...)``: SIGTERM this child when its parent dies."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
