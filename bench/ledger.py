"""The round ledger's cost: bytes per record, append (sign + fsync'd write) and offline
verify per record, and a trainer's check of the tail a model carries. Prints JSON.

    .venv/bin/python bench/ledger.py [--records 500] [--cohort 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import tempfile
import time
from pathlib import Path

import structlog

from agent.config import AggregatorConfig
from agent.identity import ca
from agent.ledger.book import RoundLedger
from agent.ledger.head import LedgerHead
from agent.ledger.store import ledger_dir
from agent.ledger.verify import verify_ledger
from agent.messages.signing import Signer
from agent.role import Role


async def main(records: int, cohort: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        authority = ca.init_ca("fed")
        key, cert = ca.issue(authority, "aggregator", role=Role.AGGREGATOR)
        signer = Signer(key, cert)
        book = RoundLedger(root, signer, AggregatorConfig())
        agents = [f"agent-{i:04d}" for i in range(cohort)]
        started = time.perf_counter()
        tail: tuple[bytes, ...] = ()
        for r in range(records):
            tail = await book.append(
                round=r,
                cohort=agents,
                survivors=agents[1:],
                dropouts=agents[:1],
                model_version=r,
                model_sha256="0" * 64,
            )
        append = (time.perf_counter() - started) / records
        started = time.perf_counter()
        verdict = verify_ledger(root, authority.cert)
        verify = (time.perf_counter() - started) / records
        head = LedgerHead(root / "head.json", authority.cert)
        started = time.perf_counter()
        head.check(tail, version=records - 1, sha256="0" * 64)
        check = time.perf_counter() - started
        size = sum(p.stat().st_size for p in ledger_dir(root).iterdir()) / records
    assert verdict.ok
    return {
        "records": records,
        "cohort": cohort,
        "bytes_per_record": round(size),
        "tail_records": len(tail),
        "tail_bytes": sum(map(len, tail)),
        "append_ms": round(1000 * append, 3),
        "verify_ms_per_record": round(1000 * verify, 3),
        "tail_check_ms": round(1000 * check, 3),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=500)
    parser.add_argument("--cohort", type=int, default=100)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(json.dumps(asyncio.run(main(args.records, args.cohort))))
