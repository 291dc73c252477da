"""Benchmark: SecAgg+ (agent/secagg) driven in process, against plain FedAvg of the same vectors.

Prints one JSON object. Every round is played in this process (no bus) with the real client and
server stage functions, for each n in --n, d in --d (float32 parameters) and dropout scenario:

- ``none``: every client completes the round.
- ``after_share_keys``: 10% of the clients shared keys but never sent a masked input, the
  expensive case for the server (it rebuilds their mask keys and strips every pairwise mask
  their live neighbours applied).
- ``spread`` (largest n only): 10% of the clients drop, spread over the four stages (never
  advertised keys, never sent shares, never sent a masked input, never revealed shares).

Every round is driven by ``agent.secagg.simulation.SecAggRound`` (the one in-process round
driver, shared with tests/test_secagg_protocol.py); the code is split over bench/secagg_round.py
(measured rounds), bench/secagg_profile.py (where the time goes) and bench/secagg_abort.py (abort
probability).

Per round:

- client compute: wall time of one client's calls to setup, advertise_keys, share_keys,
  collect_masked_input (quantization and masking included) and unmask; median and max over the
  clients that completed the round, ms. Every client is simulated and timed.
- server: ``unmask`` is ``server.finish`` (Shamir reconstruction, self- and pairwise-mask
  removal, decoding), the median of --repeats runs on copies of the same state; ``total`` adds
  setup, every receive_* (summing the masked inputs included) and close_*, in seconds.
- wall time is what the targets use; the medians of this process's CPU time over the same
  calls (``*_cpu``) and the 1-minute load average are reported beside it, because other work
  on this shared 2-core machine inflates wall time.
- upload: the bytes each client publishes, divided by d: its four messages (AdvertiseKeys,
  ShareKeys, MaskedInput, Unmask from ``agent.messages.bodies``) encoded with their envelopes by
  ``agent.messages.codec``, exactly as the agent sends them.
- plain FedAvg: ``agent.strategy.fedavg.FedAvg.aggregate`` over the survivors' float32 vectors
  (float64 accumulation), timed in the same process (median of --repeats); ratios against it.
- correctness: the unmasked weighted sum must match Σ min(w, W)·clip(x) over the survivors
  within the quantization bound, and the total weight Σ min(w, W) exactly; otherwise the
  benchmark exits non-zero without printing numbers.

Also: ``abort_probability``, a Monte Carlo over neighbour graphs (a fresh random seed per
batch) whose every trial is judged by ``agent.secagg.simulation.survival``, i.e. by the
server's own stage functions on placeholder messages;
``where_time_goes``, the largest n by d replayed with timing wrappers patched over the primitives
the stages call; ``floors``, the raw speed of those primitives; and the issue's ``targets``.

    .venv/bin/python bench/secagg.py [--quick] [--n 10 50 100] [--d 100000 1000000]
                                     [--repeats 3] [--trials 10000] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cryptography
import msgspec
import numpy as np
from secagg_abort import abort_probability
from secagg_profile import floors, profile_round
from secagg_round import DROPOUT, Json, Wire, make_cohort, measure_round, sig

from agent.messages import codec
from agent.messages.bodies import ModelUpdate
from agent.messages.envelope import new_envelope
from agent.messages.kinds import Kind
from agent.messages.tensors import to_tensor

TARGET_N, TARGET_D = 100, 1_000_000


def _target(limit: float, value: float | None, basis: str, *, strict: bool = False) -> Json:
    """One target: met when value ≤ limit (value < limit when ``strict``); null if unmeasured."""
    met = None if value is None else (value < limit if strict else value <= limit)
    return {"limit": limit, "value": value, "pass": met, "basis": basis}


def _pick(record: Json | None, *path: str) -> Any:
    for key in path:
        if record is None:
            return None
        record = record[key]
    return record


def _worst(*values: float | None) -> float | None:
    measured = [v for v in values if v is not None]
    return max(measured) if measured else None


def targets(rounds: Sequence[Json], abort: Json) -> Json:
    """The issue's targets at n = 100, d = 1M, default k and t (null: not measured)."""
    by = {r["scenario"]: r for r in rounds if (r["n"], r["d"]) == (TARGET_N, TARGET_D)}
    none, dropped = by.get("none"), by.get("after_share_keys")
    mc = abort["default"]["iid_after_share_keys"] if abort["n"] == TARGET_N else None
    client = _target(
        50,
        _worst(_pick(none, "client_ms", "median"), _pick(dropped, "client_ms", "median")),
        "median over clients, wall; the worse of 0% and 10% dropouts",
    )
    client["value_cpu"] = _worst(
        _pick(none, "client_ms", "median_cpu"), _pick(dropped, "client_ms", "median_cpu")
    )
    unmask = _target(0.5, _pick(none, "server_s", "unmask"), "server.finish, wall")
    unmask["value_cpu"] = _pick(none, "server_s", "unmask_cpu")
    unmask_dropped = _target(
        0.8,
        _pick(dropped, "server_s", "unmask"),
        "server.finish, wall; 10% of clients vanished after share_keys",
    )
    unmask_dropped["value_cpu"] = _pick(dropped, "server_s", "unmask_cpu")
    upload = _target(
        4.2,
        _worst(
            _pick(none, "upload", "bytes_per_param_max"),
            _pick(dropped, "upload", "bytes_per_param_max"),
        ),
        "max over clients of all bytes published / d",
    )
    abort_rate = _target(
        1e-3,
        _pick(mc, "probability"),
        "Monte Carlo, each client vanishes after share_keys with p = 0.1",
        strict=True,
    )
    upper = _pick(mc, "upper_95")
    abort_rate["upper_95"] = upper
    abort_rate["pass_at_upper_95"] = None if upper is None else upper < 1e-3
    return {
        "client_ms": client,
        "server_unmask_s_no_dropouts": unmask,
        "server_unmask_s_10pct_dropouts": unmask_dropped,
        "upload_bytes_per_param": upload,
        "abort_probability_10pct_dropouts": abort_rate,
    }


def machine() -> Json:
    return {
        "cpu_count": os.cpu_count(),
        "load_average_1min_at_start": sig(os.getloadavg()[0], 3),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cryptography": cryptography.__version__,
        "msgspec": msgspec.__version__,
    }


def envelope_overhead(wire: Wire, sender: str) -> Json:
    """Bytes of each SecAgg+ kind's envelope around an empty body."""
    return {
        str(kind): len(
            codec.encode_envelope(
                new_envelope(
                    kind=kind, federation=wire.federation, round=wire.round, sender=sender, body=b""
                )
            )
        )
        for kind in (Kind.ADVERTISE_KEYS, Kind.SHARE_KEYS, Kind.MASKED_INPUT, Kind.UNMASK)
    }


def wire_notes(d: int) -> Json:
    """Envelope overheads, and the plain FedAvg upload (a ModelUpdate of d float32) per
    parameter for comparison."""
    wire = Wire()
    plain = ModelUpdate(
        model_version=0, num_examples=1, tensors=[to_tensor(np.zeros(d, dtype=np.float32))]
    )
    return {
        "envelope_bytes_by_kind": envelope_overhead(wire, "agent-000"),
        "plain_fedavg_upload_bytes_per_param": sig(wire.size("agent-000", plain) / d, 6),
        "encoding": "agent.messages bodies (AdvertiseKeys, ShareKeys, MaskedInput, Unmask) "
        "encoded by agent.messages.codec.encode, as the agent publishes them",
    }


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--n", type=int, nargs="+", help="cohort sizes (default 10 50 100)")
    parser.add_argument("--d", type=int, nargs="+", help="parameters (default 100000 1000000)")
    parser.add_argument("--repeats", type=int, help="timings of finish and FedAvg (default 3)")
    parser.add_argument("--trials", type=int, help="Monte Carlo trials (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="data and dropout choices")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    quick = args.quick
    args.n = args.n or ([10, 20] if quick else [10, 50, 100])
    args.d = args.d or ([20_000] if quick else [100_000, 1_000_000])
    args.repeats = args.repeats or (1 if quick else 3)
    args.trials = args.trials or (1_000 if quick else 10_000)
    return args


def _progress(record: Json) -> None:
    print(
        f"n={record['n']} d={record['d']} {record['scenario']}: "
        f"client {record['client_ms']['median']} ms, unmask {record['server_s']['unmask']} s, "
        f"plain {record['plain_fedavg_s']} s",
        file=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(argv)
    started = time.perf_counter()
    host = machine()
    rng = np.random.default_rng(args.seed)
    largest_n, largest_d = max(args.n), max(args.d)
    rounds: list[Json] = []
    profiles: list[Json] = []
    for d in args.d:
        for n in args.n:
            cohort = make_cohort(n, d, rng)
            scenarios = ["none", "after_share_keys"] + (["spread"] if n == largest_n else [])
            for scenario in scenarios:
                rounds.append(measure_round(cohort, scenario, rng=rng, repeats=args.repeats))
                _progress(rounds[-1])
            if (n, d) == (largest_n, largest_d):
                profiles = [profile_round(cohort, s, rng=rng) for s in scenarios[:2]]
            del cohort
    abort = abort_probability(largest_n, trials=args.trials, rng=rng)
    result: Json = {
        "benchmark": "secagg+",
        "machine": host,
        "config": {
            "n": args.n,
            "d": args.d,
            "repeats": args.repeats,
            "trials": args.trials,
            "seed": args.seed,
            "dropout": DROPOUT,
        },
        "wire": wire_notes(largest_d),
        "rounds": rounds,
        "abort_probability": abort,
        "where_time_goes": {
            "n": largest_n,
            "d": largest_d,
            "rounds": profiles,
            "floors": floors(largest_d),
        },
        "targets": targets(rounds, abort),
    }
    host["load_average_1min_at_end"] = sig(os.getloadavg()[0], 3)
    result["elapsed_s"] = sig(time.perf_counter() - started, 3)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
