"""Runs: each training run of a long-lived aggregator has an id and its own directory,
``state_dir/runs/<run_id>/`` (``run-0001``, ``run-0002``, ... in the order they started).

==============================  ===========================================================
``run.json``                    written once when the run starts: id, start time, rounds
                                planned (0: until stopped), the run it continued from
``incarnations/<id>.json``      one per aggregator process that worked on the run (a
                                restart adds one; none is rewritten)
``result.json``                 written once when the run ends: ``RunOutcome``, why, rounds
(the rounds, ``open/``,         ``agent.roles.aggregator.persistence``
 ``global_model.npz``, ...)
==============================  ===========================================================

A run without ``result.json`` is unfinished: the next aggregator on the state dir resumes it
(``agent.roles.aggregator.resume``) instead of starting a new one.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from agent.atomic import write_json
from agent.errors import ConfigError

RUN_ID_RE = re.compile(r"^run-(\d{4,})$")
#: ``continue_from`` naming the newest completed run.
LAST = "last"


class RunOutcome(StrEnum):
    """How a run ended (``result.json``)."""

    COMPLETED = "completed"  #: every planned round ran
    STOPPED = "stopped"  #: stopped by the operator (SIGTERM) between or in rounds
    FAILED = "failed"  #: trained nothing, or the fleet vanished: the process exits non-zero


@dataclass(frozen=True, slots=True)
class RunInfo:
    """One run as ``fedbus runs list`` shows it."""

    run_id: str
    path: Path
    started: float
    rounds_planned: int
    continued_from: str
    rounds_done: int
    outcome: RunOutcome | None  #: None: unfinished (training, or interrupted)
    reason: str
    incarnations: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "path": str(self.path),
            "started": self.started,
            "rounds_planned": self.rounds_planned,
            "continued_from": self.continued_from,
            "rounds_done": self.rounds_done,
            "outcome": None if self.outcome is None else str(self.outcome),
            "reason": self.reason,
            "incarnations": self.incarnations,
        }


def runs_dir(state_dir: Path) -> Path:
    return state_dir / "runs"


def run_ids(state_dir: Path) -> list[str]:
    """Every run id under ``state_dir``, oldest first."""
    root = runs_dir(state_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p.name) for p in root.iterdir() if (m := RUN_ID_RE.match(p.name))]
    return [name for _, name in sorted(found)]


def is_finished(run_dir: Path) -> bool:
    return (run_dir / "result.json").is_file()


def unfinished_run(state_dir: Path) -> str | None:
    """The newest run that has no ``result.json`` (to resume), if any."""
    for run_id in reversed(run_ids(state_dir)):
        if not is_finished(runs_dir(state_dir) / run_id):
            return run_id
    return None


def new_run(state_dir: Path, *, rounds: int, continued_from: str = "") -> str:
    """Create the next run's directory and ``run.json``; returns its id."""
    ids = run_ids(state_dir)
    last = int(RUN_ID_RE.match(ids[-1]).group(1)) if ids else 0  # type: ignore[union-attr]
    run_id = f"run-{last + 1:04d}"
    run_dir = runs_dir(state_dir) / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    meta = {
        "run_id": run_id,
        "started": time.time(),
        "rounds_planned": rounds,
        "continued_from": continued_from,
    }
    write_json(run_dir / "run.json", meta)
    return run_id


def source_run(state_dir: Path, continue_from: str) -> str:
    """The run whose final model a new run starts from: ``continue_from`` itself, or for
    ``"last"`` the newest finished run that committed a round ("" when there is none yet:
    the plugin's model).

    Raises:
        ConfigError: ``continue_from`` names a run that has no model.
    """
    if continue_from == LAST:
        for run_id in reversed(run_ids(state_dir)):
            run_dir = runs_dir(state_dir) / run_id
            if is_finished(run_dir) and (run_dir / "global_model.npz").is_file():
                return run_id
        return ""  # the first run: from the plugin's model
    if not (runs_dir(state_dir) / continue_from / "global_model.npz").is_file():
        raise ConfigError(f"continue_from: run {continue_from!r} has no model in {state_dir}")
    return continue_from


def record_incarnation(run_dir: Path, incarnation: str, **fields: Any) -> None:
    """``incarnations/<id>.json``: an aggregator process started (or resumed) the run."""
    data = {"incarnation": incarnation, "started": time.time(), **fields}
    write_json(run_dir / "incarnations" / f"{incarnation}.json", data)


def finish_run(run_dir: Path, outcome: RunOutcome, *, reason: str, rounds: int) -> None:
    """``result.json``, written once: the run is over (a later aggregator starts a new one)."""
    data = {"outcome": str(outcome), "reason": reason, "rounds": rounds, "ended": time.time()}
    write_json(run_dir / "result.json", data)


def run_info(state_dir: Path, run_id: str) -> RunInfo:
    """What ``fedbus runs show`` prints.

    Raises:
        ConfigError: no such run, or its ``run.json`` is unreadable.
    """
    run_dir = runs_dir(state_dir) / run_id
    try:
        meta = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"no run {run_id!r} under {state_dir}") from exc
    result: dict[str, Any] = {}
    if is_finished(run_dir):
        try:
            result = json.loads((run_dir / "result.json").read_text())
        except (OSError, ValueError):
            result = {"outcome": None, "reason": "result.json unreadable"}
    rounds = run_dir / "rounds"
    done = [p for p in rounds.iterdir() if p.name.isdigit()] if rounds.is_dir() else []
    incarnations = run_dir / "incarnations"
    outcome = result.get("outcome")
    return RunInfo(
        run_id=run_id,
        path=run_dir,
        started=float(meta.get("started", 0.0)),
        rounds_planned=int(meta.get("rounds_planned", 0)),
        continued_from=str(meta.get("continued_from", "")),
        rounds_done=max(0, len(done) - 1),  # rounds/0000 is the initial model
        outcome=RunOutcome(outcome) if outcome else None,
        reason=str(result.get("reason", "")),
        incarnations=len(list(incarnations.glob("*.json"))) if incarnations.is_dir() else 0,
    )


def list_runs(state_dir: Path) -> list[RunInfo]:
    """Every run under ``state_dir``, oldest first."""
    return [run_info(state_dir, r) for r in run_ids(state_dir)]
