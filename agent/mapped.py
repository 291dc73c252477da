"""A received bulk read in place from its spool file, through a read-only shared mapping.

A chunked model update is spooled to disk as its chunks arrive (``agent.runtime.reassembly``).
Read back into memory whole, a 50M-parameter update is 200 MB of the aggregator's resident
set on top of the model in force and the float64 running sum (``roles.aggregator.fold``).
Mapped instead (``map_file``), the update's arrays are views of the file: each pass over it
(finiteness, norm, fold) faults its pages in from the page cache, and ``release`` lets each
array's pages go as soon as the pass is done with it, so the process holds about one array
of the update at a time, not the update. The data is not lost: a released page of a shared
file mapping is read again from the page cache (or the disk) on the next access
(``madvise(2)``, MADV_DONTNEED on a shared mapping). Pages of anything else (an array in
ordinary memory) are never touched: ``release`` does nothing for them, so callers may call it
on every array they pass over.

A mapping lives as long as some view of it does (numpy arrays keep their buffer); its file
descriptor is a duplicate (CPython's ``mmap``), so the spool may be closed once mapped. Code
that keeps an update beyond one pass should hold it in memory (``detach``): a mapping holds a
descriptor and the unlinked file's disk space.
"""

from __future__ import annotations

import mmap
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

PAGE = mmap.PAGESIZE
#: Linux only (``madvise(2)``'s MADV_DONTNEED keeps a shared file mapping's data there, and
#: ``mmap`` has ``MAP_SHARED``); elsewhere a bulk is read into memory as before.
AVAILABLE = sys.platform.startswith("linux") and hasattr(mmap, "MADV_DONTNEED")


class SpoolMap(mmap.mmap):
    """A read-only ``MAP_SHARED`` mapping of a spool file (the only kind ``release`` drops
    pages of: dropping pages of private or anonymous memory would lose data)."""

    #: the mapping's first byte's address
    address: int


def map_file(fd: int, size: int) -> memoryview:
    """The first ``size`` bytes (> 0) of the file open at ``fd``, mapped read-only and
    shared; the caller must have checked the file is at least that long (an access past its
    end is a SIGBUS).

    Raises:
        OSError: the mapping fails.
    """
    mapped = SpoolMap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    mapped.address = int(np.frombuffer(mapped, np.uint8, count=1).ctypes.data)
    return memoryview(mapped)


def _mapping(array: npt.NDArray[Any]) -> SpoolMap | None:
    """The ``SpoolMap`` ``array`` is a view of, if any."""
    base: Any = array
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return base if isinstance(base, SpoolMap) else None


def release(array: npt.NDArray[Any]) -> None:
    """Let go of the resident pages wholly inside ``array``'s bytes when it is a view of a
    ``SpoolMap`` (its values stay readable); nothing otherwise."""
    mapped = _mapping(array)
    if mapped is None or mapped.closed or array.nbytes == 0:
        return
    start = array.ctypes.data - mapped.address
    first = -(-start // PAGE) * PAGE
    end = (start + array.nbytes) // PAGE * PAGE
    if end > first:
        mapped.madvise(mmap.MADV_DONTNEED, first, end - first)


def is_mapped(array: npt.NDArray[Any]) -> bool:
    """True when ``array`` is a view of a ``SpoolMap``."""
    return _mapping(array) is not None


def detach(arrays: Sequence[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
    """``arrays`` with each mapped one copied into memory (read-only like the original),
    each copied one's pages released; the others as they are."""
    return [_in_memory(a) if is_mapped(a) else a for a in arrays]


def _in_memory(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    copy = np.array(array)
    copy.flags.writeable = False
    release(array)
    return copy


def file_size(fd: int) -> int:
    """The size in bytes of the file open at ``fd``."""
    return os.fstat(fd).st_size
