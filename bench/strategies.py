"""Server strategies under SecAgg+, and what differential privacy costs: one JSON report.

    .venv/bin/python bench/strategies.py [--quick] [--only strategies|privacy] [--out FILE]

Every run is ``bench.strategies_round.run`` (the real trainer and aggregator math, SecAgg+
through ``agent.secagg.simulation``; fixed seeds; the bus and processes left out):

1. ``strategies``: digits, 10 agents, Dirichlet α = 0.5, 20 rounds: the final federated
   accuracy of every strategy with SecAgg+ on and off, beside the centralized reference
   (the demo's: the same model on all training data, one fit per round). Targets (issue 13):
   the best strategy within 1.0 point of centralized; on vs off within 0.5 points.
2. ``privacy``: 100 agents (IID and Dirichlet 0.5), SecAgg+ on, FedAvg, C = 1, every agent
   in every round (q = 1), 20 rounds: accuracy and ε at target ε = 1, 4, 8 (δ = 1e-5) for
   central and distributed DP, beside no DP. The noise multiplier is calibrated so that the
   20 rounds spend the target (``agent.privacy.accountant.calibrate``).

``--quick`` runs 3 rounds of each (a smoke test of the script, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from strategies_round import RunSpec, run

from agent.demo.options import DemoOptions
from agent.demo.reference import centralized_accuracy
from agent.privacy.config import PrivacyConfig, PrivacyMode

STRATEGIES = ("fedavg", "fedavgm", "fedadagrad", "fedadam", "fedyogi", "fedprox")
EPSILONS = (1.0, 4.0, 8.0)
DELTA = 1e-5
CLIP_NORM = 1.0


def points(x: float | None) -> float | None:
    return None if x is None else round(100 * x, 2)


def strategies_section(rounds: int) -> dict[str, Any]:
    reference = centralized_accuracy(DemoOptions(agents=10, rounds=rounds))
    rows = {}
    for name in STRATEGIES:
        on = run(RunSpec(strategy=name, rounds=rounds, secure=True))
        off = run(RunSpec(strategy=name, rounds=rounds, secure=False))
        a_on, a_off = points(on["final_accuracy"]), points(off["final_accuracy"])
        rows[name] = {
            "secagg_on": a_on,
            "secagg_off": a_off,
            "on_minus_off": None if a_on is None or a_off is None else round(a_on - a_off, 2),
            "train_loss_on": on["history"][-1]["train_loss"],
        }
        print(f"  {name}: on {a_on} off {a_off}", file=sys.stderr, flush=True)
    best = max(STRATEGIES, key=lambda n: rows[n]["secagg_on"] or 0.0)
    ref = points(reference)
    return {
        "setup": {"agents": 10, "partition": "dirichlet", "alpha": 0.5, "rounds": rounds},
        "centralized": ref,
        "strategies": rows,
        "best": best,
        "best_gap_to_centralized": None
        if ref is None
        else round(ref - (rows[best]["secagg_on"] or 0.0), 2),
        "max_on_off_gap": max(abs(r["on_minus_off"] or 0.0) for r in rows.values()),
    }


def privacy_section(rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "setup": {
            "agents": 100,
            "rounds": rounds,
            "strategy": "fedavg",
            "secagg": True,
            "clip_norm": CLIP_NORM,
            "delta": DELTA,
            "sampling_rate": 1.0,
        }
    }
    for partition in ("iid", "dirichlet"):
        spec = RunSpec(agents=100, rounds=rounds, partition=partition, secure=True)
        rows: dict[str, Any] = {"no_dp": points(run(spec)["final_accuracy"])}
        for mode in (PrivacyMode.CENTRAL, PrivacyMode.DISTRIBUTED):
            for eps in EPSILONS:
                privacy = PrivacyConfig(
                    mode=mode, target_epsilon=eps, delta=DELTA, clip_norm=CLIP_NORM
                )
                result = run(
                    RunSpec(
                        agents=100,
                        rounds=rounds,
                        partition=partition,
                        secure=True,
                        privacy=privacy,
                    )
                )
                rows[f"{mode}_eps{eps:g}"] = {
                    "accuracy": points(result["final_accuracy"]),
                    "epsilon_spent": None
                    if result["epsilon"] is None
                    else round(result["epsilon"], 3),
                    "noise_multiplier": round(result["noise_multiplier"], 3),
                    "rounds_run": result["rounds_run"],
                }
                print(
                    f"  {partition} {mode} ε={eps}: {rows[f'{mode}_eps{eps:g}']}",
                    file=sys.stderr,
                    flush=True,
                )
        out[partition] = rows
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds per run (smoke test)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--only", choices=("strategies", "privacy"), help="one section")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else 20
    started = time.perf_counter()
    report: dict[str, Any] = {"quick": args.quick}
    if args.only in (None, "strategies"):
        report["strategies"] = strategies_section(rounds)
    if args.only in (None, "privacy"):
        report["privacy"] = privacy_section(rounds)
    report["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
