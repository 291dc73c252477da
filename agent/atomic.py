"""The one atomic file writer: every file fedbus writes goes through ``write_atomic``.

A reader, or a process restarted after SIGKILL or a power cut, sees the old file or the new
one, never a torn one, and a private file is never readable by anyone else, not for an instant:

1. a temporary file with a unique name beside the target is created with ``O_CREAT | O_EXCL``
   and mode 0600 (``tempfile.mkstemp``), so a stale temp file left by a crash is never reused,
   never truncated, and never lends its (possibly wider) mode to new data;
2. the data is written, the file's mode set to ``mode`` (exactly, whatever the umask), and the
   file fsynced;
3. it is renamed over the target (``os.replace``, atomic on POSIX), and the directory fsynced so
   the rename itself survives a crash.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

#: Mode for secrets: private keys, credentials.
PRIVATE = 0o600
#: Mode for everything else: certificates, configs, models, metrics.
PUBLIC = 0o644


def write_atomic(path: Path, data: bytes | memoryview, *, mode: int = PUBLIC) -> None:
    """Replace ``path`` with ``data`` atomically, ending with permission bits ``mode``.

    Creates missing parent directories (mode 0755 less the umask). The temporary file is
    ``.{name}.{random}.tmp`` in ``path``'s directory and is removed if anything fails.

    Raises:
        OSError: the directory cannot be created or written, or the rename fails.
    """
    write_atomic_with(path, lambda f: f.write(data), mode=mode)


def write_atomic_with(
    path: Path, write: Callable[[IO[bytes]], object], *, mode: int = PUBLIC
) -> None:
    """``write_atomic`` of what ``write`` writes to the open temporary file (binary): for
    data written in pieces (an ``.npz`` of a model), never held whole in memory.

    Raises:
        OSError: as ``write_atomic``; and whatever ``write`` raises (the temp file removed).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), mode)
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


def write_text(path: Path, text: str, *, mode: int = PUBLIC) -> None:
    """``write_atomic`` of ``text`` encoded as UTF-8."""
    write_atomic(path, text.encode("utf-8"), mode=mode)


def write_json(path: Path, obj: Any) -> None:
    """``write_atomic`` of ``obj`` as indented, key-sorted JSON with a trailing newline."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
