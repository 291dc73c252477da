"""Model weights on disk: ``.npz`` of plain arrays, written through ``agent.atomic``.

A reader (or a process restarted after SIGKILL) sees the old file or the new one, never a
torn one. Models are read with ``allow_pickle=False`` (plain arrays only, never unpickled).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from agent.atomic import write_atomic
from agent.plugin.api import Weights


def write_weights(path: Path, weights: Weights) -> None:
    """``write_atomic`` of weights as an ``.npz`` (arrays ``arr_0``, ``arr_1``, ... in order)."""
    buf = io.BytesIO()
    np.savez(buf, *weights)
    write_atomic(path, buf.getvalue())


def read_weights(path: Path) -> Weights:
    """Read weights written by ``write_weights`` (never unpickles)."""
    with np.load(path, allow_pickle=False) as npz:
        return [npz[f"arr_{i}"] for i in range(len(npz.files))]
