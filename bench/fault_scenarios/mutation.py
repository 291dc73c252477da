"""Mutated payloads through the aggregator's real receive pipeline (``Dispatcher.dispatch``
of a real ``Aggregator`` with identities on): 0 crashes, 0 tracebacks, every drop a reason.

The payloads are mutations of VALID signed (and, for the sealed kinds, sealed) messages of an
enrolled agent, so that they reach every layer: bytes (bit flips, truncation, splices),
the envelope re-signed with the agent's real key (kind, round, sender, federation, timestamp,
sealed flag, version, garbage or foreign bodies), the body's msgpack re-sealed and re-signed
(a leaf or a container changed), the signature layer (another agent's key or certificate, a
flipped certificate bit, garbage signatures, unsigned), and the topic. A plain round and an
evaluation are open, so updates and metrics reach the round's own checks.
"""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
from structlog.testing import capture_logs

from bench.fault_scenarios._mutators import mutate
from bench.fault_scenarios._target import Target

#: Events that carry a traceback or mean a check was bypassed by an exception.
TRACEBACK_EVENTS = frozenset({"decode_failed_unexpectedly", "handler_failed"})
#: Events by which a handler refuses what the pipeline let through, each with a reason.
REFUSAL_EVENTS = frozenset(
    {
        "update_rejected",
        "metrics_rejected",
        "join_refused",
        "join_ignored",
        "secagg_message_ignored",
    }
)


async def fuzz(count: int = 10_000, *, seed: int = 0) -> dict[str, Any]:
    """Dispatch ``count`` mutated payloads; the tally as one JSON-able dict.

    Keys: ``payloads``, ``crashes`` (dispatch raised), ``tracebacks`` (a logged exception),
    ``drops_without_reason``, ``dropped`` (reason → count), ``refused`` (handler reason →
    count), ``accepted`` (handled without complaint), ``ok``, ``seconds``.
    """
    rng = random.Random(seed)
    started = time.perf_counter()
    crashes = tracebacks = unexplained = accepted = 0
    dropped: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    operators: Counter[str] = Counter()
    examples: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, capture_logs() as logs:
        async with Target.create(Path(tmp)) as target:
            seeds = target.seeds()
            for _ in range(count):
                target.reopen(rng)
                topic, payload, how = mutate(rng, seeds, target)
                operators[how] += 1
                mark = len(logs)
                try:
                    await target.dispatch(topic, payload)
                except Exception as exc:  # noqa: BLE001 - counting crashes is the point
                    crashes += 1
                    examples.append(f"{how}: {exc!r}"[:200])
                    continue
                events = logs[mark:]
                for e in events:
                    if e.get("event") in TRACEBACK_EVENTS or e.get("exc_info"):
                        tracebacks += 1
                        examples.append(f"{how}: {e.get('event')} {_exc(e)}"[:300])
                drops = [e for e in events if e.get("event") == "message_dropped"]
                for e in drops:
                    if e.get("reason"):
                        dropped[str(e["reason"])] += 1
                    else:
                        unexplained += 1
                refusals = [e for e in events if e.get("event") in REFUSAL_EVENTS]
                for e in refusals:
                    refused[str(e.get("reason") or "")] += 1
                    unexplained += 0 if e.get("reason") else 1
                if not drops and not refusals:
                    accepted += 1
    return {
        "payloads": count,
        "crashes": crashes,
        "tracebacks": tracebacks,
        "drops_without_reason": unexplained,
        "dropped": dict(dropped.most_common()),
        "refused": dict(refused.most_common()),
        "accepted": accepted,
        "operators": dict(sorted(operators.items())),
        "examples": examples[:10],
        "ok": crashes == 0 and tracebacks == 0 and unexplained == 0,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _exc(event: dict[str, Any]) -> str:
    """The exception a logged traceback carries, as one line."""
    info = event.get("exc_info")
    if isinstance(info, BaseException):
        return repr(info)
    if info is True:
        return "exc_info (exception in flight)"
    return str(event.get("detail", ""))


async def mutation() -> dict[str, Any]:
    """The long version: 10,000 payloads (``FAULTS_MUTATIONS`` overrides the count)."""
    return await fuzz(int(os.environ.get("FAULTS_MUTATIONS", "10000")))


SCENARIOS = {"mutation_10k": mutation}

if __name__ == "__main__":
    print(msgspec.json.encode(asyncio.run(mutation())).decode())
