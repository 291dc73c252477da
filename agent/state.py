"""Atomic persistence: write to a temporary file, fsync, rename, fsync the directory.

A reader (or a process restarted after SIGKILL) sees the old file or the new one, never a
torn one. Models are written as ``.npz`` with ``allow_pickle=False`` semantics (plain arrays).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from agent.plugin.api import Weights


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (creates parent directories)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json(path: Path, obj: Any) -> None:
    """``write_atomic`` of ``obj`` as indented JSON."""
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_weights(path: Path, weights: Weights) -> None:
    """``write_atomic`` of weights as an ``.npz`` (arrays ``arr_0``, ``arr_1``, ... in order)."""
    buf = io.BytesIO()
    np.savez(buf, *weights)
    write_atomic(path, buf.getvalue())


def read_weights(path: Path) -> Weights:
    """Read weights written by ``write_weights`` (never unpickles)."""
    with np.load(path, allow_pickle=False) as npz:
        return [npz[f"arr_{i}"] for i in range(len(npz.files))]
