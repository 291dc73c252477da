"""The ledger on disk: ``state_dir/ledger/NNNNNNNN.rec``, one signed record per file (its
index, zero-padded), each written once through ``agent.atomic`` and never rewritten."""

from __future__ import annotations

import re
from pathlib import Path

from agent.atomic import write_atomic

#: where the ledger lives under an aggregator's state directory
LEDGER_DIR = "ledger"
_NAME = re.compile(r"^(\d{8})\.rec$")


def ledger_dir(state_dir: Path) -> Path:
    return state_dir / LEDGER_DIR


def record_name(index: int) -> str:
    return f"{index:08d}.rec"


class LedgerStore:
    """The record files of one ledger directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def files(self) -> list[tuple[int, Path]]:
        """Every record file as (index its name gives, path), by index. Other files are
        ignored (a temp file of an interrupted write)."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            match = _NAME.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return sorted(found)

    def read(self, path: Path) -> bytes:
        """Raises: OSError."""
        return path.read_bytes()

    def write(self, index: int, raw: bytes) -> None:
        """Record ``index``. Raises: OSError (also when it exists: records are never
        rewritten)."""
        path = self.directory / record_name(index)
        if path.exists():
            raise FileExistsError(f"{path} exists: ledger records are written once")
        write_atomic(path, raw)
