"""The demo's report directory: ``metrics.json``, ``metrics.csv`` and ``accuracy.png``.

The plot shows the federated test accuracy per round for the chosen strategy against the
centralized reference (the same model trained on all the data), the test loss, and, when
differential privacy is on, the ε spent after each round (at the run's δ) in a panel below.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from agent.atomic import write_atomic, write_json
from agent.roles.aggregator.records import RoundRecord

CSV_COLUMNS = (
    "round",
    "accuracy",
    "loss",
    "train_loss",
    "seconds",
    "cohort_size",
    "survivors",
    "dropouts",
    "num_examples",
    "model_version",
    "model_sha256",
    "epsilon",
)


def write_report(
    report_dir: Path,
    *,
    records: list[RoundRecord],
    final_accuracy: float | None,
    centralized_accuracy: float | None,
    settings: dict[str, Any],
    wall_seconds: float,
    stopped: str | None = None,
) -> list[Path]:
    """Write the three report files; returns their paths. ``stopped``: why the run ended
    before its last round (``"privacy_budget"``), None if it ran them all."""
    report_dir.mkdir(parents=True, exist_ok=True)
    metrics = {
        "settings": settings,
        "rounds": [r.to_dict() for r in records],
        "final_accuracy": final_accuracy,
        "centralized_accuracy": centralized_accuracy,
        "wall_seconds": wall_seconds,
        "stopped": stopped,
    }
    json_path = report_dir / "metrics.json"
    write_json(json_path, metrics)
    csv_path = report_dir / "metrics.csv"
    write_atomic(csv_path, _csv(records).encode())
    png_path = report_dir / "accuracy.png"
    title = f"{settings.get('strategy', 'fedavg')}, plugin {settings.get('plugin', '')}"
    if settings.get("dp", "off") != "off":
        title += f", {settings['dp']} DP (target ε = {settings.get('epsilon')})"
    write_atomic(png_path, _plot(records, centralized_accuracy, title))
    return [json_path, csv_path, png_path]


def _csv(records: list[RoundRecord]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in records:
        writer.writerow(
            [
                r.round,
                r.accuracy,
                r.loss,
                r.train_loss,
                round(r.seconds, 4),
                len(r.cohort),
                len(r.survivors),
                len(r.dropouts),
                r.num_examples,
                r.model_version,
                r.model_sha256,
                r.epsilon,
            ]
        )
    return buf.getvalue()


def _plot(records: list[RoundRecord], centralized_accuracy: float | None, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    evaluated = [r for r in records if r.accuracy is not None]
    rounds = [r.round for r in evaluated]
    charged = [r for r in records if r.epsilon is not None]
    if charged:
        fig, (acc_ax, eps_ax) = plt.subplots(
            2, 1, figsize=(7, 6), dpi=120, sharex=True, height_ratios=(3, 1.4)
        )
        eps_ax.plot(
            [r.round for r in charged], [r.epsilon for r in charged], "d-", color="tab:purple"
        )
        delta = charged[-1].privacy["delta"] if charged[-1].privacy else None
        eps_ax.set_ylabel(f"ε spent (δ = {delta:g})" if delta else "ε spent")
        eps_ax.set_xlabel("round")
        eps_ax.grid(alpha=0.3)
    else:
        fig, acc_ax = plt.subplots(figsize=(7, 4), dpi=120)
    acc_ax.plot(
        rounds,
        [100 * (r.accuracy or 0.0) for r in evaluated],
        "o-",
        color="tab:blue",
        label="federated test accuracy",
    )
    if centralized_accuracy is not None:
        acc_ax.axhline(
            100 * centralized_accuracy,
            linestyle="--",
            color="tab:gray",
            label="centralized reference",
        )
    if not charged:
        acc_ax.set_xlabel("round")
    acc_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    acc_ax.set_ylabel("accuracy (%)")
    loss_ax = acc_ax.twinx()
    losses = [r.loss if r.loss is not None else float("nan") for r in evaluated]
    loss_ax.plot(rounds, losses, "s-", color="tab:red", alpha=0.6, label="federated test loss")
    loss_ax.set_ylabel("loss")
    lines = acc_ax.get_legend_handles_labels()
    more = loss_ax.get_legend_handles_labels()
    acc_ax.legend(lines[0] + more[0], lines[1] + more[1], loc="center right")
    acc_ax.set_title(f"fedbus demo: {title}")
    acc_ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
