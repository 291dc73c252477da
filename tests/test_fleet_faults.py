"""The fleet half of the fault suite, small (issue 14): a silent admitted agent, a flood of
joins from one device, and a broker killed mid-round under SecAgg+, on real brokers. The same
scenarios run large in ``bench/fault_scenarios/fleet.py``; SIGKILLed agent processes are in
``tests/test_fleet_faults_processes.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.brokers import EmbeddedBroker
from bench.fault_scenarios.fleet import broker_restart, flood, silent_agent

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]


async def test_a_silent_agent_costs_one_deadline(broker: EmbeddedBroker, tmp_path: Path) -> None:
    """Admitted, then mute: round 1 waits its deadline for it; no later round samples it or
    waits for it, and every round still completes with the honest agents."""
    result = await silent_agent(broker, tmp_path, honest=3, rounds=3)
    assert result["waited_full_deadline"] == [1]
    assert result["silent_in_cohort"] == [1]
    assert [r["survivors"] for r in result["rounds"]] == [3, 3, 3]


async def test_a_flood_of_joins_drops_no_honest_message(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """2,000 joins from one admitted device during round 1: shed before decode and only the
    flooder's; every honest member survives the round; the flood gets no second answer."""
    result = await flood(broker, tmp_path, honest=3, messages=2000, rounds=1)
    assert result["ok"], result
    assert result["bus_queue_full"] == 0
    assert result["honest_survivors_round_1"] == 3
    assert set(result["shed_by_sender_at_least"]) == {"mallory"}
    assert result["honest_dropped"] == 0
    # its own join, then at most one answer per rejoin_interval (5 s) of flooding
    assert result["joins_answered_mallory"] <= 2 + result["flood_seconds"]


async def test_a_broker_killed_mid_secure_round(broker: EmbeddedBroker, tmp_path: Path) -> None:
    """The broker is SIGKILLed during the training of SecAgg+ round 3 and comes back 1.5 s
    later; the masked inputs are published while it is down, the agents reconnect one by one,
    and that round completes with every member (mosquitto: the persistent sessions it saved,
    older than its autosave interval; NATS: the re-published messages)."""
    result = await broker_restart(broker, tmp_path, honest=4, rounds=3, restart_round=3)
    assert result["reconnects"] == 5
    assert result["secagg_aborted"] == 0
    assert result["restart_round_survivors"] == 4
    assert [r["model_version"] for r in result["rounds"]] == [1, 2, 3]


async def test_over_selection_waits_for_no_silent_agent(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """Over-selected (the cohort needs 3 of 4 admitted, all 4 are asked), the silent agent is
    sampled every round but never waited for: every round closes once 3 answered."""
    result = await silent_agent(broker, tmp_path, honest=3, rounds=2, over_selection=0.3)
    assert result["ok"], result
    assert result["waited_full_deadline"] == []
    assert result["silent_in_cohort"] == [1, 2]
