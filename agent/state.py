"""Model weights on disk: ``.npz`` of plain arrays, written through ``agent.atomic``.

A reader (or a process restarted after SIGKILL) sees the old file or the new one, never a
torn one. Models are read with ``allow_pickle=False`` (plain arrays only, never unpickled).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.atomic import write_atomic, write_atomic_with
from agent.plugin.api import Weights


def write_weights(path: Path, weights: Weights) -> None:
    """``write_atomic`` of weights as an ``.npz`` (arrays ``arr_0``, ``arr_1``, ... in order)."""
    # straight into the temp file: a BytesIO would hold the whole model once more (and
    # twice while it grows)
    write_atomic_with(path, lambda f: np.savez(f, *weights))


def read_weights(path: Path) -> Weights:
    """Read weights written by ``write_weights`` (never unpickles)."""
    with np.load(path, allow_pickle=False) as npz:
        return [npz[f"arr_{i}"] for i in range(len(npz.files))]


def write_arrays(path: Path, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
    """``write_atomic`` of named plain arrays as an ``.npz`` (keys are the array names).

    Raises:
        ValueError: an array holds Python objects (it would need pickle).
    """
    if any(np.asarray(a).dtype.hasobject for a in arrays.values()):
        raise ValueError("object arrays cannot be saved without pickle")
    buf = io.BytesIO()
    named = {k: np.asarray(a) for k, a in arrays.items()}
    np.savez(buf, allow_pickle=False, **named)
    write_atomic(path, buf.getvalue())


def read_arrays(path: Path) -> dict[str, npt.NDArray[Any]]:
    """The named arrays ``write_arrays`` wrote (never unpickles)."""
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}
