"""Benchmark: `fedbus demo` with its defaults (10 agent processes, 20 rounds, Dirichlet 0.5)
on each bus, against the centralized training of the same MLP in the same process.

Prints JSON. `ratio_to_centralized` = demo wall time / centralized training time measured in
this run, so the figure is comparable across noisy, shared machines.

    .venv/bin/python bench/demo.py [--buses nats mqtt] [--agents 10] [--rounds 20]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

from agent.demo.options import DemoOptions
from agent.demo.reference import centralized_accuracy
from agent.demo.runner import run_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--buses", nargs="+", default=["nats", "mqtt"])
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    results: dict[str, object] = {"agents": args.agents, "rounds": args.rounds}
    with tempfile.TemporaryDirectory() as tmp:
        base = DemoOptions(agents=args.agents, rounds=args.rounds, report_dir=Path(tmp) / "c")
        started = time.perf_counter()
        centralized_accuracy(base)
        baseline = time.perf_counter() - started
        results["centralized_training_seconds"] = round(baseline, 3)
        for bus in args.buses:
            options = DemoOptions(
                agents=args.agents, rounds=args.rounds, bus=bus, report_dir=Path(tmp) / bus
            )
            started = time.perf_counter()
            outcome = run_demo(options, out=io.StringIO())
            wall = time.perf_counter() - started
            if outcome is None:
                sys.exit("interrupted")
            rounds = outcome.summary.rounds
            results[bus] = {
                "wall_seconds": round(wall, 3),
                "mean_round_seconds": round(sum(r.seconds for r in rounds) / len(rounds), 4),
                "final_accuracy": outcome.summary.final_accuracy,
                "centralized_accuracy": outcome.centralized_accuracy,
                "ratio_to_centralized": round(wall / baseline, 2),
            }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
