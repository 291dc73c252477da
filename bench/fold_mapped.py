"""Benchmark: one chunked plain update, rebuilt from its spool and folded, read whole into
memory (as before ``agent.mapped``) or through a mapping of its spool. Prints JSON.

In-process, no broker: the update's chunks go through ``Reassembly`` (spooled to disk),
then ``assemble`` + ``plain_round.bounded`` + ``RunningMean.add``, the aggregator's path for
one update, timed, with the resident set's growth over the model in force and the float64
sum (``VmHWM`` after ``clear_refs``; Linux only). Alternates the two ways ``--repeat`` times.

    .venv/bin/python bench/fold_mapped.py [--d 5e7] [--repeat 2] [--chunk-size 1048576]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import structlog

from agent.messages import Kind
from agent.messages.bodies import ModelUpdate
from agent.messages.chunks import build
from agent.messages.codec import validate_body
from agent.messages.envelope import new_envelope
from agent.messages.tensors import to_tensors
from agent.robust.settings import RobustConfig
from agent.roles.aggregator.fold import RunningMean
from agent.roles.aggregator.plain_round import bounded
from agent.runtime import assembly
from agent.runtime.heap import return_large_frees
from agent.runtime.reassembly import Reassembly

LAYER = 1 << 22
MB = 1_000_000


def rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return 0


def once(d: int, chunk_size: int, *, mapped: bool) -> dict[str, float]:
    shapes = [min(LAYER, d - s) for s in range(0, d, LAYER)]
    base = [np.zeros(n, np.float32) for n in shapes]
    weights = [np.full(n, 0.5, np.float32) for n in shapes]
    body = ModelUpdate(model_version=1, num_examples=10, tensors=to_tensors(weights))
    del weights
    topic = "fl/bench/model_para/update/a1"
    manifest, frames = build(body, chunk_size, sealed=False)
    reassembly = Reassembly()
    envelope = new_envelope(kind=Kind.MANIFEST, federation="bench", round=1, sender="a1", body=b"")
    reassembly.begin(topic, envelope, manifest)
    transfer = None
    for frame in frames:
        transfer = reassembly.add(topic, frame) or transfer
    del body, frames
    assert transfer is not None
    assert not transfer.missing
    fold = RunningMean(base, robust=RobustConfig())
    for acc in fold._sum:  # the sum's pages in, as after the first update of a round
        acc.fill(0.0)
    assembly.MAPPED = frozenset({Kind.MODEL_UPDATE}) if mapped else frozenset()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    held = rss("VmRSS:")
    started = time.perf_counter()
    update = validate_body(assembly.assemble(transfer))
    assert isinstance(update, ModelUpdate)
    kept, weight, verdict = bounded(base, update, declared=0, robust=RobustConfig())
    fold.add(kept, weight, agent_id="a1", norm=verdict.float_norm)
    seconds = time.perf_counter() - started
    grown = rss("VmHWM:") - held
    fold.close()
    return {"seconds": round(seconds, 3), "rss_growth_mb": round(grown / MB, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--d", type=float, default=5e7)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=1 << 20)
    args = parser.parse_args()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    return_large_frees()  # as the aggregator does
    runs: dict[str, list[dict[str, float]]] = {"whole": [], "mapped": []}
    for _ in range(args.repeat):
        for way in ("whole", "mapped"):
            runs[way].append(once(int(args.d), args.chunk_size, mapped=way == "mapped"))
    print(json.dumps({"d": int(args.d), "model_mb": 4 * int(args.d) / MB, **runs}, indent=2))


if __name__ == "__main__":
    main()
