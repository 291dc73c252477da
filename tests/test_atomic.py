"""The one atomic writer: modes from creation on, stale temp files never reused, no torn files."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from agent import atomic
from agent.atomic import PRIVATE, PUBLIC, write_atomic
from agent.identity.pem import write_private_key

pytestmark = pytest.mark.timeout(30)


def _mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 000: nothing but the writer itself keeps a file private."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def modes_seen(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every mode the temporary file has: right after creation and right before the rename."""
    seen: list[int] = []
    real_mkstemp: Callable[..., tuple[int, str]] = tempfile.mkstemp
    real_replace = os.replace

    def mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, name = real_mkstemp(*args, **kwargs)
        seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return fd, name

    def replace(src: str, dst: str) -> None:
        seen.append(_mode(src))
        real_replace(src, dst)

    monkeypatch.setattr(atomic.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(atomic.os, "replace", replace)
    return seen


@pytest.mark.usefixtures("open_umask")
def test_a_private_file_is_never_readable_by_others_even_beside_stale_temp_files(
    tmp_path: Path, modes_seen: list[int]
) -> None:
    """Stale temp files (the old fixed ``.tmp`` name and our own pattern), world-readable and
    holding old data, are neither reused nor widened into: the key is 0600 at every step."""
    target = tmp_path / "agent.key"
    legacy = tmp_path / "agent.key.tmp"
    ours = tmp_path / ".agent.key.stale.tmp"
    for stale in (legacy, ours):
        stale.write_bytes(b"old")
        stale.chmod(0o666)
    write_private_key(target, ec.generate_private_key(ec.SECP256R1()))
    assert modes_seen, "the writer did not go through write_atomic"
    assert all(mode & 0o077 == 0 for mode in modes_seen), [oct(m) for m in modes_seen]
    assert _mode(target) == PRIVATE
    assert target.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    for stale in (legacy, ours):
        assert stale.read_bytes() == b"old"
        assert _mode(stale) == 0o666
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["agent.key", "agent.key.tmp", ".agent.key.stale.tmp"]
    )


@pytest.mark.usefixtures("open_umask")
def test_public_files_get_exactly_their_mode_whatever_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "ca.pem"
    write_atomic(target, b"cert")
    assert _mode(target) == PUBLIC
    write_atomic(target, b"cert2", mode=0o640)
    assert (_mode(target), target.read_bytes()) == (0o640, b"cert2")


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "model.npz"
    write_atomic(target, b"old")

    def fail(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]
