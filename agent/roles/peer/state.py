"""A peer's model on disk: ``state_dir/p2p_model.npz`` (the arrays ``arr_0``… and the
``version``), rewritten atomically after every gossip step, so a restarted peer (a crash, a
duty cycle) goes on from its last step."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.plugin.api import Weights
from agent.state import read_arrays, write_arrays

FILE = "p2p_model.npz"


def save(state_dir: Path, weights: Weights, version: int) -> None:
    """Write the model after step ``version``."""
    arrays = {f"arr_{i}": a for i, a in enumerate(weights)}
    write_arrays(state_dir / FILE, {**arrays, "version": np.asarray(version, dtype=np.int64)})


def load(state_dir: Path) -> tuple[Weights, int] | None:
    """The saved model and its version; None when there is none."""
    path = state_dir / FILE
    if not path.exists():
        return None
    arrays = read_arrays(path)
    version = int(arrays.pop("version"))
    return [arrays[f"arr_{i}"] for i in range(len(arrays))], version
