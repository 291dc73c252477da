"""ARCHITECTURE.md stays true: its topic table is the code's, and every module it names exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.messages.topics import TOPICS

pytestmark = pytest.mark.timeout(30)
ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")


def test_the_topic_table_is_the_code_s() -> None:
    rows = {}
    for line in DOC.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`fl/"):
            kinds = {k.strip() for k in cells[2].split(",")}
            rows[cells[0].strip("`")] = (cells[1], kinds, cells[3] == "yes")
    assert rows == {
        spec.template: (str(spec.publisher), {str(k) for k in spec.kinds}, spec.retained)
        for spec in TOPICS
    }


def test_every_module_named_exists() -> None:
    """Paths like `roles/aggregator/round.py` (under agent/) or `agent/atomic.py`,
    `bench/secagg.py`, `systemd/…` (under the repository root)."""
    named = set(re.findall(r"`([A-Za-z0-9_./-]+\.(?:py|md|yaml|sh|service))`", DOC))
    named |= {m for m in re.findall(r"\b([a-z_]+/[a-z_/]+\.py)\b", DOC)}
    assert len(named) > 40
    missing = []
    for name in sorted(named):
        if "*" in name:
            continue
        candidates = [ROOT / name, ROOT / "agent" / name]
        if not any(p.exists() for p in candidates):
            missing.append(name)
    assert missing == []
