"""``fedbus demo --mode p2p``: no aggregator; the demo only watches the peers' statuses
(version, accuracy, model sketch: ``agent.roles.peer``) and prints the fleet's progress until
every peer has taken ``--rounds`` gossip steps."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TextIO

from agent.atomic import write_atomic
from agent.bus.base import Bus, BusSettings
from agent.bus.url import TlsFiles, bus_from_url
from agent.demo.p2p_mean import FinalAccuracy, final_accuracy
from agent.errors import ProtocolError, RoundError
from agent.messages import topics
from agent.messages.bodies import AgentStatus, Liveness
from agent.messages.codec import decode
from agent.roles.peer.sketch import distances
from agent.roles.peer.view import merge
from agent.runtime.tasks import task_group

HEADER = "seconds  steps (min-max)  accuracy  from mean  online"
#: Seconds without any peer's version moving before the demo gives up.
STALL = 60.0


@dataclass(frozen=True, slots=True)
class Sample:
    """The fleet at one moment: mean/min/max version, mean accuracy of the peers' own
    evaluations, the largest distance from the mean (``sketch.distances``), peers online."""

    seconds: float
    mean_version: float
    min_version: int
    max_version: int
    accuracy: float | None
    max_distance: float | None
    online: int
    #: peers that stopped training (their steps taken, or no neighbour left)
    done: int = 0
    #: the lowest of the peers' own evaluations (the worst peer)
    min_accuracy: float | None = None


@dataclass(frozen=True, slots=True)
class P2PResult:
    timeline: list[Sample]
    final_accuracy: float | None
    wall_seconds: float
    #: the peers' mean model and each peer's model, over every peer's test slice
    #: (``p2p_mean.final_accuracy``; None: not measured)
    final_models: FinalAccuracy | None = None
    #: per peer, how often it went offline while still training (a status ``offline`` that
    #: followed ``online`` and did not say ``done``): counted from every status heard, not
    #: from the once-a-second samples, which can miss a short spell
    offline_spells: dict[str, int] = field(default_factory=dict)


def sample(statuses: dict[str, AgentStatus], peers: Sequence[str], seconds: float) -> Sample:
    """The ``Sample`` of the newest status of each of ``peers`` (missing ones at version 0)."""
    versions = [statuses[a].model_version or 0 if a in statuses else 0 for a in peers]
    accuracies = [s.accuracy for s in statuses.values() if s.accuracy is not None]
    gaps = distances({a: s.sketch for a, s in statuses.items() if s.sketch})
    return Sample(
        seconds=round(seconds, 3),
        mean_version=sum(versions) / len(versions),
        min_version=min(versions),
        max_version=max(versions),
        accuracy=sum(accuracies) / len(accuracies) if accuracies else None,
        max_distance=max(gaps.values()) if gaps else None,
        online=sum(1 for s in statuses.values() if s.state is Liveness.ONLINE),
        done=sum(1 for a in peers if a in statuses and statuses[a].done),
        min_accuracy=min(accuracies) if accuracies else None,
    )


def line(s: Sample) -> str:
    acc = "      -" if s.accuracy is None else f"{100 * s.accuracy:6.2f}%"
    gap = "        -" if s.max_distance is None else f"{s.max_distance:9.4f}"
    steps = f"{s.mean_version:5.1f} ({s.min_version}-{s.max_version})"
    return f"{s.seconds:7.1f}  {steps:<15}  {acc:>8}  {gap}  {s.online:6d}"


async def _read(bus: Bus, statuses: dict[str, AgentStatus], offline_spells: dict[str, int]) -> None:
    async for raw in bus.messages():
        try:
            message = decode(raw.payload)
        except ProtocolError:
            continue
        if isinstance(message.body, AgentStatus):
            sender = message.envelope.sender
            old = statuses.get(sender)
            new = statuses[sender] = merge(old, message.body)
            left = old is not None and old.state is Liveness.ONLINE
            if left and new.state is Liveness.OFFLINE and not new.done:
                offline_spells[sender] = offline_spells.get(sender, 0) + 1


async def watch_peers(
    url: str,
    peers: Sequence[str],
    steps: int,
    out: TextIO,
    *,
    federation: str,
    tls: TlsFiles | None = None,
    every: float = 1.0,
) -> P2PResult:
    """Print the fleet every ``every`` s until each of ``peers`` reported ``steps`` steps
    or that it is done.

    Raises:
        RoundError: no peer's version moved for ``STALL`` s.
    """
    statuses: dict[str, AgentStatus] = {}
    offline_spells: dict[str, int] = {}
    timeline: list[Sample] = []
    started = time.monotonic()
    settings = BusSettings(client_id=f"{federation}-demo-p2p-watch")
    async with bus_from_url(url, settings, tls=tls) as bus, task_group() as tg:
        await bus.subscribe(topics.STATUS.filter(federation))
        reader = tg.create_task(_read(bus, statuses, offline_spells), name="demo-p2p-status")
        print(HEADER, file=out, flush=True)
        moved, last = started, -1.0
        try:
            while True:
                await asyncio.sleep(every)
                now = time.monotonic()
                s = sample(statuses, peers, now - started)
                timeline.append(s)
                print(line(s), file=out, flush=True)
                if s.mean_version != last:
                    moved, last = now, s.mean_version
                if s.min_version >= steps or s.done == len(peers):
                    break
                if now - moved > STALL:
                    raise RoundError(f"no peer took a step for {STALL:.0f} s")
        finally:
            reader.cancel()
    final = timeline[-1].accuracy if timeline else None
    wall = time.monotonic() - started
    return P2PResult(timeline, final, wall, offline_spells=dict(offline_spells))


def write_timeline(report_dir: Path, result: P2PResult) -> Path:
    """``report_dir/p2p.json``: the fleet's timeline and final accuracy."""
    path = report_dir / "p2p.json"
    data = {
        "final_accuracy": result.final_accuracy,
        "final_models": None if result.final_models is None else asdict(result.final_models),
        "wall_seconds": round(result.wall_seconds, 3),
        "offline_spells": result.offline_spells,
        "timeline": [asdict(s) for s in result.timeline],
    }
    write_atomic(path, json.dumps(data, indent=2).encode())
    return path


def run_p2p(
    url: str,
    configs: Mapping[str, Path],
    steps: int,
    out: TextIO,
    *,
    report_dir: Path,
    tls: TlsFiles | None,
) -> P2PResult:
    """Watch the peers to the end (``watch_peers``), print the final line's accuracy and
    write ``p2p.json``; None-free: raises ``RoundError`` on a stall, ``KeyboardInterrupt``
    on a signal."""
    from agent.node import run_until_signal

    peers = list(configs)
    result = run_until_signal(watch_peers(url, peers, steps, out, federation="demo", tls=tls))
    if result is None:
        raise KeyboardInterrupt
    result = replace(result, final_models=final_accuracy(configs))
    path = write_timeline(report_dir, result)
    models = result.final_models
    mean, worst = (None, None) if models is None else (models.mean_model, models.worst_peer)
    print(
        f"final accuracy {_pct(result.final_accuracy)} (mean of the peers' own evaluations) "
        f"after {result.wall_seconds:.1f} s of training; over every test slice: the peers' "
        f"mean model {_pct(mean)}, the worst peer {_pct(worst)}; timeline: {path}",
        file=out,
        flush=True,
    )
    return result


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"
