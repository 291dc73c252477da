"""``Holders.lost``: which members of an async SecAgg+ buffer lost their held update."""

from __future__ import annotations

import pytest

from agent.roles.aggregator.holders import Holders
from agent.roles.aggregator.records import AgentRecord

pytestmark = pytest.mark.timeout(10)


def test_offline_rejoined_and_released_holders_are_lost() -> None:
    first = {a: AgentRecord(10, 0.0) for a in ("a", "b", "c", "d")}
    holders = Holders()
    for agent_id, record in first.items():
        holders.add(agent_id, record)
    now = {**first, "c": AgentRecord(10, 5.0)}  # c was admitted again: a new life
    holders.release(["d"])  # d's round ended
    cohort = ["a", "b", "c", "d"]
    assert holders.lost(cohort, alive={"a", "c", "d"}, admitted=now) == ["b", "c", "d"]
    assert holders.lost(["a"], alive={"a"}, admitted=now) == []
    assert "a" in holders
    assert "d" not in holders
    assert sorted(holders) == ["a", "b", "c"]
