"""numpy's BLAS worker threads go to sleep soon after they run out of work.

numpy's wheels bundle OpenBLAS, which starts (cores - 1) worker threads when numpy is
imported. An idle worker polls for work for ``2**28`` CPU cycles (OpenBLAS
``driver/others/blas_server.c``, ``THREAD_TIMEOUT``: about 0.1 s at 2.5 GHz) before it
sleeps, at start and again after every BLAS call. On a 2-core machine that polling is about
0.1 s of CPU at every start of a ``fedbus`` process (``import numpy``: 0.20 to 0.27 s of CPU
against 0.10 to 0.16 s with ``OPENBLAS_THREAD_TIMEOUT=20``), and it grows with the cores: a
4-core device pays it three times. ``2**20`` cycles (about 0.4 ms) keeps the workers awake
between the back-to-back BLAS calls of a training step and asleep soon after the step.

OpenBLAS reads the variable once, when numpy loads it: ``quiet_blas_threads`` must run
before anything imports numpy (the ``fedbus`` entry point calls it first). A value the user
set, or ``OPENBLAS_NUM_THREADS``, is left as it is; the variable is inherited by the
processes ``fedbus`` starts (the demo's agents, a command plugin). Other BLAS libraries
(MKL, Accelerate) ignore it.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

#: OpenBLAS's idle-poll length, as log2 of CPU cycles (it clamps the value to 4..30).
THREAD_TIMEOUT = "20"
VARIABLE = "OPENBLAS_THREAD_TIMEOUT"


def quiet_blas_threads(environ: MutableMapping[str, str] | None = None) -> bool:
    """Set ``OPENBLAS_THREAD_TIMEOUT`` to ``THREAD_TIMEOUT`` in ``environ`` (the process's
    environment by default) unless it, or ``OPENBLAS_NUM_THREADS``, is already set. True when
    set. Without effect on a numpy already imported."""
    env = os.environ if environ is None else environ
    if VARIABLE in env or "OPENBLAS_NUM_THREADS" in env:
        return False
    env[VARIABLE] = THREAD_TIMEOUT
    return True
