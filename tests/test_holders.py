"""``Holders.lost``: which members of an async SecAgg+ buffer lost their held update."""

from __future__ import annotations

import pytest

from agent.messages.bodies import Liveness
from agent.roles.aggregator.holders import Holders
from agent.roles.aggregator.records import AgentRecord
from agent.roles.liveness import Seen

pytestmark = pytest.mark.timeout(10)


def test_offline_rejoined_and_released_holders_are_lost() -> None:
    first = {a: AgentRecord(10, 0.0) for a in ("a", "b", "c", "d")}
    holders = Holders()
    for agent_id, record in first.items():
        holders.add(agent_id, record)
    now = {**first, "c": AgentRecord(10, 5.0)}  # c was admitted again: a new life
    holders.release(["d"])  # d's round ended
    cohort = ["a", "b", "c", "d"]
    statuses = {
        "a": Seen(Liveness.ONLINE, "", 0.0),  # its heartbeat may be late: it still counts
        "b": Seen(Liveness.OFFLINE, "", 0.0),
    }
    assert holders.lost(cohort, statuses=statuses, admitted=now) == ["b", "c", "d"]
    assert holders.lost(["a"], statuses=statuses, admitted=now) == []
    assert "a" in holders
    assert "d" not in holders
    assert sorted(holders) == ["a", "b", "c"]
