"""``fedbus runs list|show``: the aggregator's training runs, read from its state dir
(``state_dir/runs/<run_id>/``, ``agent.roles.aggregator.runs``), on the aggregator's host."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import click

_STATE = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The aggregator's state_dir.",
)
_CONFIG = click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The aggregator's TOML config (its state_dir is used).",
)


def _state_dir(state_dir: Path | None, config_path: Path | None) -> Path:
    if (state_dir is None) == (config_path is None):
        raise click.UsageError("give exactly one of --state-dir and --config")
    if state_dir is not None:
        return state_dir
    from agent.config import AgentConfig

    assert config_path is not None
    return AgentConfig.load(config_path).state_dir


def _when(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _outcome(info: Any) -> str:
    return "unfinished" if info.outcome is None else str(info.outcome)


@click.group("runs")
def runs_group() -> None:
    """The aggregator's training runs (each with its id and directory)."""


@runs_group.command("list")
@_STATE
@_CONFIG
@click.option("--json", "as_json", is_flag=True, help="A JSON array.")
def runs_list(state_dir: Path | None, config_path: Path | None, as_json: bool) -> None:
    """Every run, oldest first: id, start, rounds done / planned, outcome."""
    from agent.roles.aggregator.runs import list_runs

    runs = list_runs(_state_dir(state_dir, config_path))
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in runs], indent=2))
        return
    header = ("RUN", "STARTED", "ROUNDS", "OUTCOME", "CONTINUED FROM")
    table: list[tuple[str, ...]] = [header]
    for r in runs:
        planned = "∞" if r.rounds_planned == 0 else str(r.rounds_planned)
        done = f"{r.rounds_done}/{planned}"
        table.append((r.run_id, _when(r.started), done, _outcome(r), r.continued_from or "-"))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@runs_group.command("show")
@click.argument("run_id")
@_STATE
@_CONFIG
def runs_show(run_id: str, state_dir: Path | None, config_path: Path | None) -> None:
    """One run: its directory, rounds, outcome and why, incarnations, and its last round."""
    from agent.roles.aggregator.runs import run_info

    info = run_info(_state_dir(state_dir, config_path), run_id)
    for key, value in info.to_dict().items():
        click.echo(f"{key}: {value if value not in (None, '') else '-'}")
    records = info.path / "metrics.json"
    if records.is_file():
        rounds = json.loads(records.read_text())
        if rounds:
            last = rounds[-1]
            click.echo(
                f"last round: {last['round']}: {len(last['survivors'])} survivors, "
                f"{len(last['dropouts'])} dropouts, accuracy {last['accuracy']}"
            )
