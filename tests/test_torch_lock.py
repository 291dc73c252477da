"""`scripts/check-lock --outside-lock torch==2.13.0`: torch, installed by the Makefile's own
pinned step, is accepted beside the hashed lock at exactly that version, and nowhere else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(60)


def _check(lock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check-lock"), str(lock), *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_torch_is_accepted_only_as_pinned_outside_the_lock(tmp_path: Path) -> None:
    lock = ROOT / "requirements.lock"
    ok = _check(lock, "--outside-lock", "torch==2.13.0")
    assert ok.returncode == 0, ok.stderr
    assert "outside it torch==2.13.0" in ok.stdout
    unpinned = _check(lock)
    assert unpinned.returncode == 1
    assert "torch: lock -, installed 2.13.0" in unpinned.stderr
    wrong = _check(lock, "--outside-lock", "torch==2.12.0")
    assert wrong.returncode == 1
    assert "install 2.12.0 by its own step" in wrong.stderr
    locked = tmp_path / "with-torch.lock"
    locked.write_text(lock.read_text() + "torch==2.13.0 \\\n    --hash=sha256:00\n")
    refused = _check(locked, "--outside-lock", "torch==2.13.0")
    assert refused.returncode == 1
    assert "torch: must not be in the lock" in refused.stderr
