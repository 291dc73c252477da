"""``runtime.heap``: the aggregator's large frees go back to the kernel (Linux, glibc)."""

from __future__ import annotations

import sys

import pytest

from agent.runtime.heap import return_large_frees


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_the_mmap_threshold_is_set_on_linux() -> None:
    assert return_large_frees() is True
