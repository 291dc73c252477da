"""A peer's model and sealing key on disk: ``state_dir/p2p_model.npz`` (the arrays
``arr_0``… and the ``version``), rewritten atomically after every gossip step, so a restarted
peer (a crash, a duty cycle) goes on from its last step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from agent.atomic import PRIVATE, write_atomic
from agent.plugin.api import Weights
from agent.state import read_arrays, write_arrays

FILE = "p2p_model.npz"
#: The peer's X25519 sealing key (raw 32 bytes, 0600): kept across restarts, so the models
#: a persistent MQTT session queued for it while it was down still open.
KEY_FILE = "p2p_seal.key"


def seal_key(state_dir: Path) -> X25519PrivateKey:
    """The peer's sealing key, made and saved on first use."""
    path = state_dir / KEY_FILE
    if path.exists():
        return X25519PrivateKey.from_private_bytes(path.read_bytes())
    key = X25519PrivateKey.generate()
    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    write_atomic(path, raw, mode=PRIVATE)
    return key


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
