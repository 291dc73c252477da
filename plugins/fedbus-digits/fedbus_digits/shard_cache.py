"""This agent's shard of the digits, cached as an ``.npz`` in the plugin's state dir.

Building a shard (``fedbus_digits.data.agent_data``) imports scikit-learn for its copy of the
data: about 80 MB of memory and most of a second of start-up, on every start. The first start
writes the result, the shard and test slice only, to
``STATE_DIR/digits-mlp/shard-<key>.npz`` (``agent.state.write_arrays``: the one atomic
writer); later starts read it back with ``np.load(allow_pickle=False)`` and never import
scikit-learn.

The key is the SHA-256 of everything the shard depends on (``agent_index``, ``num_agents``,
``partition``, ``alpha``, ``seed``, ``test_fraction``, ``min_examples``) and a format version,
so another agent index, partition or seed never reads a file made for other options. A file
that cannot be read, or whose arrays are not a shard (names, dtypes, shapes), is rebuilt and
rewritten. Without a state dir (``PluginContext.state_dir`` None) nothing is cached.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any, Final

import numpy as np

from agent.state import read_arrays, write_arrays
from fedbus_digits.data import AgentData, Dataset, Partition, agent_data

#: Bump when the recipe in ``fedbus_digits.data`` changes what a shard holds.
FORMAT: Final = 1
#: The cache's directory under the plugin's state dir.
CACHE_DIR: Final = "digits-mlp"
_FEATURES: Final = 64
_ARRAYS: Final = ("train_x", "train_y", "test_x", "test_y")


def cache_key(
    agent_index: int,
    num_agents: int,
    *,
    partition: Partition,
    alpha: float,
    seed: int,
    test_fraction: float,
    min_examples: int,
) -> str:
    """The first 32 hex digits of the SHA-256 of the shard's recipe (canonical JSON)."""
    recipe = {
        "format": FORMAT,
        "agent_index": agent_index,
        "num_agents": num_agents,
        "partition": str(partition),
        "alpha": float(alpha),
        "seed": seed,
        "test_fraction": float(test_fraction),
        "min_examples": min_examples,
    }
    canonical = json.dumps(recipe, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def cached_agent_data(
    state_dir: Path | None, agent_index: int, num_agents: int, **kw: Any
) -> AgentData:
    """``agent_data(agent_index, num_agents, **kw)``, from the cache in ``state_dir`` when
    it holds this recipe's shard, else built and cached. Arrays read back are read-only.

    Raises:
        ValueError: as ``agent_data``, for options out of range (checked when building).
    """
    if state_dir is None:
        return agent_data(agent_index, num_agents, **kw)
    path = state_dir / CACHE_DIR / f"shard-{cache_key(agent_index, num_agents, **kw)}.npz"
    cached = _read(path)
    if cached is not None:
        return cached
    data = agent_data(agent_index, num_agents, **kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_arrays(
        path,
        {
            "train_x": data.train.x,
            "train_y": data.train.y,
            "test_x": data.test.x,
            "test_y": data.test.y,
        },
    )
    return data


def _read(path: Path) -> AgentData | None:
    """The shard at ``path``, or None when it is missing or not a shard."""
    try:
        arrays = read_arrays(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # absent, or not an npz
        return None
    if sorted(arrays) != sorted(_ARRAYS):
        return None
    parts = []
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.dtype != np.float32 or y.dtype != np.int64:
            return None
        if x.ndim != 2 or x.shape[1] != _FEATURES or y.shape != (x.shape[0],):
            return None
        if not bool(np.isfinite(x).all()):
            return None
        x.flags.writeable = False
        y.flags.writeable = False
        parts.append(Dataset(x=x, y=y))
    return AgentData(train=parts[0], test=parts[1])
