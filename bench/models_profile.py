"""Profiling aids for ``bench/models.py``'s aggregator child: where its memory grows.

Each writes a text file named by an environment variable; neither is part of the JSON.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

MB = 1_000_000


def rss_traced(main: Any) -> Any:
    """Run ``main`` sampling VmRSS every 20 ms; at each new peak (5 MB above the last),
    write every thread's innermost ``agent/`` frames to ``$FEDBUS_BENCH_RSS`` (where the
    resident set grows; a profiling aid, not part of the JSON)."""
    import threading
    import traceback

    lines: list[str] = []
    best = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            rss = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGESIZE")
            if rss > best[0] + 5 * MB:
                best[0] = rss
                lines.append(f"rss {rss / MB:.0f} MB")
                for frame in sys._current_frames().values():
                    ours = [f for f in traceback.extract_stack(frame) if "/agent/" in f.filename]
                    lines.extend(
                        f"    {f.filename.split('/agent/')[-1]}:{f.lineno} {f.name}"
                        for f in ours[-3:]
                    )

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        return main()
    finally:
        stop.set()
        thread.join()
        Path(os.environ["FEDBUS_BENCH_RSS"]).write_text("\n".join(lines))


def traced(main: Any) -> Any:
    """Run ``main`` under tracemalloc; write the top allocations at the traced peak to
    ``$FEDBUS_BENCH_TRACEMALLOC`` (a profiling aid, not part of the JSON)."""
    import threading
    import tracemalloc

    tracemalloc.start(8)
    best: list[Any] = [0, None]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            current, _ = tracemalloc.get_traced_memory()
            if current > best[0] + 5 * MB:
                best[:] = [current, tracemalloc.take_snapshot()]

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        return main()
    finally:
        stop.set()
        thread.join()
        lines = [f"peak traced {best[0] / MB:.1f} MB"]
        if best[1] is not None:
            for stat in best[1].statistics("traceback")[:12]:
                lines.append(f"{stat.size / MB:8.1f} MB")
                lines += [f"    {frame}" for frame in stat.traceback.format()[-8:]]
        Path(os.environ["FEDBUS_BENCH_TRACEMALLOC"]).write_text("\n".join(lines))
