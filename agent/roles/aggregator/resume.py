"""Resuming a run: what a restarted aggregator reads back from ``runs/<run_id>/``
(``agent.roles.aggregator.persistence`` wrote it).

The newest committed round (``rounds/NNNN/`` with its ``checkpoint.json``) gives the round to
go on after, the model in force, the strategy's state, the cohort sampler's state and the
agents that were admitted; every committed round's ``metrics.json`` gives the records so far.
A round that was open (``open/NNNN-*.json``) and never committed was interrupted: it is
aborted (logged ``round_aborted`` with the stage it reached) and run again from the
committed model, so it is never half-applied.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy.typing as npt
import structlog

from agent.errors import ConfigError
from agent.plugin.api import Weights
from agent.roles.aggregator import runs
from agent.roles.aggregator.persistence import Checkpoint
from agent.roles.aggregator.records import GlobalState, RoundRecord
from agent.state import read_arrays, read_weights

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Resumed:
    """A run's state after its newest committed round."""

    checkpoint: Checkpoint
    model: GlobalState
    strategy: dict[str, npt.NDArray[Any]]
    records: list[RoundRecord]
    #: the open records of rounds that never committed (the interrupted round)
    aborted: list[dict[str, Any]] = field(default_factory=list)


def committed_rounds(run_dir: Path) -> list[int]:
    """The committed round numbers of the run (0 is the initial model), ascending."""
    rounds = run_dir / "rounds"
    if not rounds.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in rounds.iterdir()
        if p.name.isdigit() and (p / "checkpoint.json").is_file()
    )


def load(run_dir: Path) -> Resumed | None:
    """The state after the newest committed round, or None when nothing was committed.

    Raises:
        ConfigError: a committed round's files are unreadable or inconsistent (the model's
            digest is not the one its checkpoint names).
    """
    done = committed_rounds(run_dir)
    if not done:
        return None
    last = done[-1]
    where = run_dir / "rounds" / f"{last:04d}"
    try:
        checkpoint = Checkpoint.from_dict(json.loads((where / "checkpoint.json").read_text()))
        model = GlobalState.of(checkpoint.model_version, read_weights(where / "model.npz"))
        strategy = read_arrays(where / "strategy.npz") if (where / "strategy.npz").is_file() else {}
        records = [
            RoundRecord(
                **json.loads((run_dir / "rounds" / f"{r:04d}" / "metrics.json").read_text())
            )
            for r in done
            if r > 0
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot resume {run_dir}: round {last} is unreadable: {exc}") from exc
    if model.sha256 != checkpoint.model_sha256:
        raise ConfigError(f"cannot resume {run_dir}: round {last}'s model is not its checkpoint's")
    aborted = []
    for path in sorted((run_dir / "open").glob("*.json")):
        try:
            opened = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if int(opened.get("round", 0)) > last:
            aborted.append(opened)
            log.warning(
                "round_aborted",
                round=opened.get("round"),
                stage=opened.get("stage", ""),
                incarnation=opened.get("incarnation", ""),
                reason="the aggregator stopped before the round was committed; it runs again",
            )
    return Resumed(checkpoint, model, strategy, records, aborted)


@dataclass(frozen=True, slots=True)
class OpenedRun:
    """The run an aggregator works on: its id and directory, where it resumes (None: from
    its first round) and the model its round 0 starts from."""

    run_id: str
    run_dir: Path
    resumed: Resumed | None
    #: the caller's arrays in a list of the run's own, which the aggregator empties as it
    #: builds round 0's wire form (``GlobalState.taking``): the run holds the model once
    initial: Weights


def open_run(state_dir: Path, *, rounds: int, continue_from: str, initial: Weights) -> OpenedRun:
    """Resume the newest unfinished run under ``state_dir``, or start the next one (from
    ``initial``, or from the final model of the run ``continue_from`` names).

    Raises:
        ConfigError: ``continue_from`` names no run with a model; a committed round is
            unreadable.
    """
    run_id = runs.unfinished_run(state_dir)
    if run_id is None:
        source = runs.source_run(state_dir, continue_from) if continue_from else ""
        run_id = runs.new_run(state_dir, rounds=rounds, continued_from=source)
    run_dir = runs.runs_dir(state_dir) / run_id
    resumed = load(run_dir)
    source = _continued_from(run_dir)
    if resumed is None and source:
        initial = read_weights(runs.runs_dir(state_dir) / source / "global_model.npz")
        log.info("run_continues", run_id=run_id, continued_from=source)
    return OpenedRun(run_id, run_dir, resumed, list(initial))  # its own list: see ``initial``


def _continued_from(run_dir: Path) -> str:
    try:
        return str(json.loads((run_dir / "run.json").read_text()).get("continued_from", ""))
    except (OSError, ValueError):
        return ""
