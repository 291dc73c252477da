"""Benchmark: one SecAgg+ round at cohort sizes up to n = 1,000, stage by stage (issue 15, item 6).

Prints one JSON object. For each n in --n (default 100 300 1000) at d = --d (default 100,000)
one round is played in this process by ``agent.secagg.simulation.SecAggRound`` (the real client
and server stage functions), with --dropout of the clients (default 10%) vanishing after
share_keys, the case where the server rebuilds mask keys. Per stage:

- ``clients_cpu_s``: this process's CPU seconds over every client's call of the stage (what a
  fleet of simulated agents on one machine pays), ``client_ms_median``: one client's (a
  device's) wall time; ``server_s``: the server's receive and close calls of the stage, wall
  (``server_finish_cpu_s``: one more ``finish`` on a copy of the state, CPU).
- ``messages``: what crosses the bus in the stage, each way (``to_aggregator``, ``relayed``:
  the aggregator's publishes, one per recipient, one broadcast for the unmask request, with
  the per-survivor count it replaced beside it), and their bytes as the agent encodes them
  (``agent.messages.codec``, no signature or sealing, which add a constant per message).

``old_path`` measures, in the same process and round, the code this change replaced: each
client building the whole neighbour graph (``legacy_neighbours``, the former
``graph.neighbours``: O(n·k) per client) and ``Setup.x_of`` as ``tuple.index`` (O(n) per share,
O(n²·t) in the server's reconstruction), against ``graph.neighbours_of`` (uncached: a device;
cached per (cohort, seed): the agents of one fleet process) and the O(1) ``x_of``. The old
setup is timed on --sample clients and scaled to n; ``finish`` is timed whole both ways (the
best of two, CPU seconds: this machine is shared, its wall time is not this process's). Every
graph row is checked equal between the two and the round's sum checked against the plain
weighted sum (``secagg_round.check_sum``): a mismatch exits non-zero.

    .venv/bin/python bench/secagg_scale.py [--n 100 300 1000] [--d 100000] [--out FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
from secagg_round import (
    CLIENT_STAGES,
    FEDERATION,
    ROUND,
    BenchError,
    Cohort,
    Json,
    Recorder,
    Wire,
    check_sum,
    sig,
)

from agent.messages.bodies import FitIns, PeerKeys, RelayKeys, RelayShares, UnmaskRequest
from agent.roles.aggregator.secure_round import setup_body
from agent.secagg import graph
from agent.secagg.keys import RoundContext
from agent.secagg.simulation import SERVER, SecAggRound, announce
from agent.secagg.state import Setup, Stage

#: The server's stage functions, by the stage whose messages they take in or close.
SERVER_STEPS = {
    "setup": ("setup",),
    "advertise_keys": ("receive_keys", "close_advertise"),
    "share_keys": ("receive_shares", "close_share_keys"),
    "collect_masked_input": ("receive_masked_input", "close_collect"),
    "unmask": ("receive_unmask", "finish"),
}


def legacy_neighbours(cohort: Sequence[str], *, k: int, seed: bytes) -> dict[str, frozenset[str]]:
    """The graph as every client built it before ``graph.neighbours_of`` (verbatim)."""
    n = len(cohort)
    order = sorted(cohort, key=lambda a: hashlib.sha256(seed + a.encode()).digest())
    out: dict[str, set[str]] = {a: set() for a in order}
    for i, a in enumerate(order):
        for step in range(1, k // 2 + 1):
            out[a].add(order[(i + step) % n])
            out[a].add(order[(i - step) % n])
        if k % 2:
            out[a].add(order[(i + n // 2) % n])
    return {a: frozenset(v) for a, v in out.items()}


def legacy_x_of(setup: Setup, agent_id: str) -> int:
    """``Setup.x_of`` before it kept an index."""
    return setup.cohort.index(agent_id) + 1


class LazyUpdates(Mapping[str, Any]):
    """Agent id → its update, shape (d,) float32, 3·N(0, 1), rebuilt from a per-agent seed on
    each access: n·d floats are never held at once (n = 1000, d = 100k would be 400 MB)."""

    def __init__(self, ids: Sequence[str], d: int, seed: int) -> None:
        self._index = {a: i for i, a in enumerate(ids)}
        self._d, self._seed = d, seed

    def __getitem__(self, agent: str) -> Any:
        rng = np.random.default_rng([self._seed, self._index[agent]])
        return rng.standard_normal(self._d, dtype=np.float32) * np.float32(3)

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


class LazyCohort(Cohort):
    """``secagg_round.Cohort`` over ``LazyUpdates`` (for ``check_sum``)."""

    def update(self, agent: str) -> Any:
        return self.updates[agent]  # type: ignore[call-overload]


def timed(call: Any) -> tuple[Any, float]:
    """``call()`` and the CPU seconds it took (the machine is shared: wall time is not ours)."""
    start = time.process_time()
    out = call()
    return out, time.process_time() - start


def finish_cpu_s(sim: SecAggRound, *, legacy: bool, repeats: int = 2) -> float:
    """The smallest CPU seconds of ``repeats`` ``server.finish`` runs on copies of the state,
    with the former ``x_of`` or the current one (CPU time: the machine is shared)."""
    laps = []
    for _ in range(repeats):
        with mock.patch.object(Setup, "x_of", legacy_x_of) if legacy else nullcontext():
            start = time.process_time()
            sim.finish(keep_state=True)
            laps.append(time.process_time() - start)
    return min(laps)


def old_path(setup: Setup, sim: SecAggRound, *, sample: int) -> Json:
    """The replaced code against the new, in this process (see the module docstring)."""
    k, seed, ids = setup.params.num_neighbours, setup.graph_seed, setup.cohort
    chosen = ids[:: max(1, len(ids) // sample)][:sample]
    rows, legacy_s = {}, 0.0
    for a in chosen:
        full, seconds = timed(lambda: legacy_neighbours(ids, k=k, seed=seed))
        rows[a], legacy_s = full[a], legacy_s + seconds
    device_s = 0.0
    for a in chosen:
        graph._ranking.cache_clear()  # a device: nothing cached
        row, seconds = timed(lambda a=a: graph.neighbours_of(ids, a, k=k, seed=seed))
        device_s += seconds
        if row != rows[a] or row != sim.clients[a].neighbours:
            raise BenchError(f"{a}'s neighbours differ between the old and the new graph")
    graph._ranking.cache_clear()
    _, fleet_s = timed(lambda: [graph.neighbours_of(ids, a, k=k, seed=seed) for a in ids])
    old_client_setup_s = legacy_s / len(chosen) * len(ids)
    finish_old_s = finish_cpu_s(sim, legacy=True)
    finish_new_s = finish_cpu_s(sim, legacy=False)
    device_cohort_s = device_s / len(chosen) * len(ids)
    return {
        "sampled_clients": len(chosen),
        "client_setup_cpu_s_all_clients": {
            "old_full_graph_each": sig(old_client_setup_s),
            "new_own_row_uncached": sig(device_cohort_s),
            "new_own_row_cached_per_process": sig(fleet_s),
        },
        "client_setup_ms_per_device": {
            "old": sig(1e3 * legacy_s / len(chosen)),
            "new": sig(1e3 * device_s / len(chosen)),
        },
        "server_finish_cpu_s": {"old_x_of": sig(finish_old_s), "new": sig(finish_new_s)},
        "ratios_old_over_new": {
            "client_setup_fleet": sig(old_client_setup_s / fleet_s, 3),
            "client_setup_device": sig(old_client_setup_s / device_cohort_s, 3),
            "server_finish": sig(finish_old_s / finish_new_s, 3),
        },
    }


def messages(
    setup: Setup, wire: Wire, recorder: Recorder, relays: Mapping[str, Mapping[str, Any]]
) -> Json:
    """Messages and bytes per stage, each way (see the module docstring)."""
    sent: dict[str, list[int]] = {s: [] for s in CLIENT_STAGES[1:]}
    for uploads in recorder.uploads.values():
        for stage, size in uploads.items():
            sent[stage].append(size)
    fit = FitIns(
        model_version=0,
        model_sha256=bytes(32),
        deadline=60.0,
        secagg=setup_body(setup, stage_timeout=5),
    )
    out: Json = {
        "fit_ins": {
            "relayed": len(setup.cohort),
            "relayed_bytes": len(setup.cohort) * wire.size("aggregator", fit),
        }
    }
    for stage in CLIENT_STAGES[1:]:
        bodies = relays.get(stage, {})
        out[stage] = {
            "to_aggregator": len(sent[stage]),
            "to_aggregator_bytes": sum(sent[stage]),
            "relayed": len(bodies),
            "relayed_bytes": sum(wire.size("aggregator", b) for b in bodies.values()),
        }
    # Before the unmask request became a broadcast it went to each survivor's inbox.
    one = out["collect_masked_input"]
    one["relayed_before_broadcast"] = len(recorder.masked_senders())
    one["relayed_bytes_before_broadcast"] = one["relayed_bytes"] * len(recorder.masked_senders())
    out["total"] = {
        "messages": sum(s.get("to_aggregator", 0) + s["relayed"] for s in out.values()),
        "bytes": sum(s.get("to_aggregator_bytes", 0) + s["relayed_bytes"] for s in out.values()),
    }
    return out


def measure(n: int, d: int, *, dropout: float, sample: int, seed: int) -> Json:
    """One round at (n, d): per-stage seconds, messages, and the old path's figures."""
    rng = np.random.default_rng(seed)
    setup = announce(n, d, context=RoundContext(FEDERATION, ROUND), graph_seed=rng.bytes(32))
    ids = setup.cohort
    updates = LazyUpdates(ids, d, seed)
    weights = {a: int(w) for a, w in zip(ids, rng.integers(1, 2000, n), strict=True)}
    lost = frozenset(str(a) for a in rng.choice(ids, size=round(dropout * n), replace=False))
    recorder = Recorder()
    graph._ranking.cache_clear()
    sim = SecAggRound(
        setup, updates, weights, {Stage.COLLECT_MASKED_INPUT: lost} if lost else {}, recorder
    )
    keys = sim.advertise()
    shares = sim.share(keys)
    survivors, dropped = sim.collect(shares)
    sim.unmask(survivors, dropped)
    aggregate, finish_s = timed(lambda: sim.finish(keep_state=True))
    cohort = LazyCohort(setup, updates, tuple(weights[a] for a in ids))  # type: ignore[arg-type]
    check = check_sum(cohort, aggregate, recorder.masked_senders())
    clock, done = recorder.clock, recorder.completed()
    stages: Json = {}
    for stage, steps in SERVER_STEPS.items():
        stages[stage] = {
            "clients_cpu_s": sig(sum(clock.cpu_total(a, stage) for a in ids)),
            "client_ms_median": sig(1e3 * statistics.median(clock.total(a, stage) for a in done)),
            "server_s": sig(sum(clock.total(SERVER, s) for s in steps)),
        }
    stages["unmask"]["server_finish_cpu_s"] = sig(finish_s)
    request = UnmaskRequest(survivors=survivors, dropped=dropped)
    relays = {
        "advertise_keys": {
            u: RelayKeys(keys={v: PeerKeys(k.enc, k.mask) for v, k in peers.items()})
            for u, peers in keys.items()
        },
        "share_keys": {u: RelayShares(ciphertexts=dict(c)) for u, c in shares.items()},
        "collect_masked_input": {"broadcast": request},  # one publish for every survivor
    }
    return {
        "n": n,
        "d": d,
        "k": setup.params.num_neighbours,
        "t": setup.params.threshold,
        "dropouts_after_share_keys": len(lost),
        "survivors": len(survivors),
        "load_average_1min": sig(os.getloadavg()[0], 3),
        "stages": stages,
        "round_cpu_s_all_agents_in_one_process": sig(
            sum(sum(clock.cpu_laps.get(key, ())) for key in clock.cpu_laps)
        ),
        "messages": messages(setup, recorder.wire, recorder, relays),
        "old_path": old_path(setup, sim, sample=sample),
        "check": check,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--d", type=int, default=100_000)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--sample", type=int, default=50, help="clients timed on the old setup")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rounds = []
    for n in args.n:
        rounds.append(measure(n, args.d, dropout=args.dropout, sample=args.sample, seed=args.seed))
        print(f"n={n}: {json.dumps(rounds[-1]['stages'])}", file=sys.stderr)
    result = {
        "benchmark": "secagg+ at scale",
        "cpu_count": os.cpu_count(),
        "config": vars(args) | {"out": str(args.out) if args.out else None},
        "rounds": rounds,
        "elapsed_s": sig(time.perf_counter() - started, 3),
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
