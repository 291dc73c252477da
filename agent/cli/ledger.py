"""``fedbus ledger verify STATE_DIR --ca CA.pem``: the round ledger checked offline
(``agent.ledger.verify``). Exit 0 when every record checks out, 1 naming the first bad one."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import click

from agent.identity.pem import load_certificate
from agent.ledger.verify import verify_ledger


@click.group("ledger")
def ledger() -> None:
    """The aggregator's signed, hash-chained round ledger."""


@ledger.command("verify")
@click.argument("state_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--ca",
    "ca_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The federation CA certificate (PEM) the aggregator's certificate chains to.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of prose.")
def verify(state_dir: Path, ca_file: Path, as_json: bool) -> None:
    """Check every record under STATE_DIR/ledger: signature, chain, order, no gaps."""
    verdict = verify_ledger(state_dir, load_certificate(ca_file))
    head = verdict.head
    report = {
        "ok": verdict.ok,
        "records": verdict.records,
        "superseded": verdict.superseded,
        "head": None
        if head is None
        else {
            "index": head.entry.index,
            "round": head.entry.round,
            "run_id": head.entry.run_id,
            "hash": head.hash.hex(),
            "model_sha256": head.entry.model_sha256,
            "time": dt.datetime.fromtimestamp(head.entry.time, dt.UTC).isoformat(),
        },
        "bad_record": None if verdict.bad is None else str(verdict.bad),
        "reason": verdict.reason or None,
        "detail": verdict.detail or None,
    }
    if as_json:
        click.echo(json.dumps(report))
    elif verdict.ok:
        click.echo(
            f"ledger ok: {verdict.records} records ({verdict.superseded} superseded by a "
            f"re-run), head {report['head']}"
        )
    else:
        click.echo(
            f"ledger BAD at {verdict.bad} ({verdict.reason}): {verdict.detail}; "
            f"{verdict.records} records before it check out",
            err=True,
        )
    if not verdict.ok:
        sys.exit(1)
