"""The fault suite's long runs: every scenario of every module in ``bench/fault_scenarios/``,
one JSON line each on stdout.

A scenario module exposes ``SCENARIOS: dict[str, Callable[[], Awaitable[dict]]]``; modules
whose name starts with ``_`` are helpers, not scenarios. Each line is the scenario's own dict
with ``scenario`` (``module.name``), ``ok`` (the scenario's verdict, False when it raised)
and ``seconds`` added; the exit status is 1 when any scenario is not ok.

    python bench/faults.py                       # everything
    python bench/faults.py mallory mutation_10k  # scenarios (or modules) whose name matches
    python bench/faults.py --list

Logs go to stderr, so stdout stays one JSON object per line.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCENARIO_DIR = Path(__file__).resolve().parent / "fault_scenarios"
Scenario = Callable[[], Awaitable[dict[str, Any]]]


def discover() -> dict[str, Scenario]:
    """``module.name`` → scenario, for every scenario module, in name order."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    found: dict[str, Scenario] = {}
    for path in sorted(SCENARIO_DIR.glob("*.py")):
        if path.name.startswith("_"):
            continue
        module = importlib.import_module(f"bench.fault_scenarios.{path.stem}")
        for name, scenario in getattr(module, "SCENARIOS", {}).items():
            found[f"{path.stem}.{name}"] = scenario
    return found


async def run_one(name: str, scenario: Scenario) -> dict[str, Any]:
    """The scenario's result line; a scenario that raises is a line with ``ok: false``."""
    started = time.perf_counter()
    try:
        result = dict(await scenario())
    except Exception as exc:  # noqa: BLE001 - one broken scenario must not hide the others
        traceback.print_exc(file=sys.stderr)
        result = {"ok": False, "error": repr(exc)[:500]}
    result.setdefault("ok", False)
    return {"scenario": name, **result, "seconds": round(time.perf_counter() - started, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("only", nargs="*", help="run the scenarios whose name contains these")
    parser.add_argument("--list", action="store_true", help="print the scenario names")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    _logs_to_stderr()
    scenarios = discover()
    chosen = {n: s for n, s in scenarios.items() if not args.only or any(o in n for o in args.only)}
    if args.list:
        print("\n".join(chosen))
        return 0
    failed = 0
    for name, scenario in chosen.items():
        line = asyncio.run(run_one(name, scenario))
        failed += not line["ok"]
        print(json.dumps(line, default=str), flush=True)
    return 1 if failed or not chosen else 0


def _logs_to_stderr() -> None:
    """structlog's default printer writes to stdout: send it to stderr."""
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))


if __name__ == "__main__":
    sys.exit(main())
