"""The C heap of a process that handles model-sized buffers: large blocks go back to the
kernel when freed.

glibc's malloc serves a request of at least ``M_MMAP_THRESHOLD`` bytes with a mapping of its
own, unmapped on free. By default that threshold is dynamic: freeing such a block raises it
to the block's size (up to 32 MiB on 64-bit, glibc ``mallopt(3)``), so after the first
16 MiB layer is freed the next ones come from the heap arenas instead (one per thread that
allocates: the aggregator rebuilds and folds updates in worker threads), where free space
short of an arena's top stays with the process. The aggregator's resident set then exceeds
what it holds by up to a model's size: 1182 MB at 50M float32 parameters where the same run
with a fixed 1 MiB threshold peaked at 1088 MB. Setting the threshold turns the dynamic
adjustment off: chunks, layers and models are mapped and unmapped on their own, for one
mmap/munmap pair per such block.
"""

from __future__ import annotations

import ctypes
import sys

#: ``mallopt`` parameter number of the mmap threshold (glibc ``malloc.h``).
M_MMAP_THRESHOLD = -3
#: Blocks of at least this many bytes are mapped on their own.
THRESHOLD = 1 << 20


def return_large_frees(threshold: int = THRESHOLD) -> bool:
    """Fix the C library's mmap threshold at ``threshold`` bytes for this process. True when
    set; False where there is no ``mallopt`` (not Linux, or a C library without it)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
