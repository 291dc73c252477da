"""30 % of the agent processes SIGKILLed in the middle of round 1 (issue 14's fault suite,
small): no later round waits a full deadline for them. Separate processes, because what
matters is what the broker sees when a process dies (MQTT: its will; NATS: nothing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.brokers import EmbeddedBroker
from bench.fault_scenarios.fleet import sigkill_fraction

pytestmark = [pytest.mark.broker, pytest.mark.timeout(150)]


async def test_killed_agents_cost_at_most_round_1(broker: EmbeddedBroker, tmp_path: Path) -> None:
    """Five trainer processes, two SIGKILLed 1 s into round 1. MQTT: their wills arrive at
    once, so no round waits a deadline; NATS: round 1 waits its deadline (no will), after
    which they are not sampled until they show life, which they never do."""
    result = await sigkill_fraction(
        broker, tmp_path, agents=5, fraction=0.3, rounds=3, round_timeout=6.0
    )
    assert result["killed"] == 2
    survivors = [r["survivors"] for r in result["rounds"]]
    assert survivors[0] >= 3, result  # a victim may have delivered before it died
    assert survivors[1:] == [3, 3], result
    assert result["killed_in_cohort_after_round_1"] == []
    assert set(result["waited_full_deadline"]) <= {1}
    if broker.kind == "mqtt":
        assert result["waited_full_deadline"] == []
