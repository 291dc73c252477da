"""SecAgg+ over a real mosquitto and a real nats-server: the demo's accuracy is unchanged,
and agents SIGKILLed in the middle of a secure round are recovered from their Shamir shares.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.brokers import EmbeddedBroker
from agent.bus.base import BusSettings
from agent.bus.url import bus_from_url
from agent.config import (
    AgentConfig,
    AggregatorConfig,
    PluginConfig,
    SecAggConfig,
    SecureAggregation,
    TrainerConfig,
)
from agent.demo.processes import AgentProcess, start_agent, stop_agents
from agent.messages import Kind, decode
from agent.plugin.api import PluginContext
from agent.plugin.loader import load_plugin
from agent.role import Role
from agent.roles.aggregator import Aggregator
from tests.helpers import agent_log_lines, fedbus

pytestmark = [pytest.mark.broker, pytest.mark.timeout(180)]


def _demo(broker: EmbeddedBroker, report: Path, secure: str) -> dict:
    run = fedbus(
        "demo",
        "--bus-url",
        broker.url,
        "--agents",
        "4",
        "--rounds",
        "4",
        "--secure-aggregation",
        secure,
        "--report-dir",
        str(report),
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"secure aggregation {secure}" in run.stdout
    return json.loads((report / "metrics.json").read_text())


def test_secure_demo_reaches_the_plain_accuracy(broker: EmbeddedBroker, tmp_path: Path) -> None:
    """The same demo (4 agent processes, 4 rounds, same seed) with SecAgg+ and without ends
    within 0.5 accuracy points; every secure stage closed because everyone answered, not at
    a deadline, and every update travelled masked."""
    secure = _demo(broker, tmp_path / "secure", "secagg+")
    plain = _demo(broker, tmp_path / "plain", "none")
    assert abs(secure["final_accuracy"] - plain["final_accuracy"]) <= 0.005
    assert all(len(r["survivors"]) == 4 for r in secure["rounds"])
    log = (tmp_path / "secure" / "logs" / "aggregator.log").read_text()
    events = [json.loads(line) for line in log.splitlines()]
    closed = [e for e in events if e.get("event") == "secagg_stage_closed"]
    assert len(closed) == 4 * 4
    assert not any(e["timed_out"] for e in closed)
    agent_log = agent_log_lines(tmp_path / "secure" / "logs", "agent-00")
    sent = [e for e in agent_log if e["event"] == "update_sent"]
    assert len(sent) == 4
    assert all(e["masked"] for e in sent)


def _agent_config(i: int, url: str, tmp_path: Path) -> Path:
    agent_id = f"agent-{i}"
    config = AgentConfig(
        role=Role.TRAINER,
        agent_id=agent_id,
        federation="fed",
        bus_url=url,
        state_dir=tmp_path / agent_id,
        plugin=PluginConfig(
            name="digits-mlp", options={"agent_index": i, "num_agents": 6, "partition": "iid"}
        ),
        trainer=TrainerConfig(join_retry=0.5, require_secure_aggregation=True),
    )
    path = tmp_path / f"{agent_id}.toml"
    path.write_bytes(config.to_toml())
    return path


async def _kill_after_sharing(url: str, victims: dict[str, AgentProcess]) -> None:
    """SIGKILL each victim as soon as its round-1 share_keys is seen on the broker: it has
    shared its secrets but will never send a masked input."""
    async with bus_from_url(url, BusSettings(client_id="assassin")) as spy:
        await spy.subscribe("fl/fed/secagg/share_keys/+")
        await spy.wait_connected(timeout=10)
        async for raw in spy.messages():
            message = decode(raw.payload)
            if message.kind is Kind.SHARE_KEYS and message.round == 1:
                victim = victims.pop(message.sender, None)
                if victim is not None:
                    victim.kill()
                if not victims:
                    return


async def test_agents_killed_mid_round_are_recovered(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """Six agent processes; two are SIGKILLed right after sending their shares in round 1.
    The round unmasks the four survivors' sum by rebuilding the dead agents' mask keys from
    the survivors' shares; round 2 completes too, without them (MQTT: their wills; NATS: the
    deadline they missed). Both rounds produce a new model."""
    initial = load_plugin(
        "digits-mlp", PluginContext("aggregator", {"agent_index": 0, "num_agents": 6})
    ).get_weights()
    schedule = AggregatorConfig(
        rounds=2,
        min_fit_clients=3,
        min_available_clients=6,
        join_timeout=60.0,
        round_timeout=6.0,
        eval_timeout=10.0,
        fit_config={"epochs": 30},
        secure_aggregation=SecureAggregation.SECAGG_PLUS,
        secagg=SecAggConfig(stage_timeout=3.0),
    )
    config = AgentConfig(
        role=Role.AGGREGATOR,
        agent_id="aggregator",
        federation="fed",
        bus_url=broker.url,
        state_dir=tmp_path / "aggregator",
        plugin=PluginConfig(name="digits-mlp"),
        aggregator=schedule,
    )
    agents: list[AgentProcess] = []
    try:
        for i in range(6):
            path = _agent_config(i, broker.url, tmp_path)
            agents.append(start_agent(f"agent-{i}", path, tmp_path / "logs" / f"agent-{i}.log"))
        victims = {"agent-1": agents[1], "agent-4": agents[4]}
        with capture_logs() as logs:
            async with bus_from_url(broker.url, BusSettings(client_id="aggregator")) as bus:
                killer = asyncio.create_task(_kill_after_sharing(broker.url, dict(victims)))
                summary = await Aggregator(
                    config=config, bus=bus, plugin_name="digits-mlp", initial_weights=initial
                ).run()
                await asyncio.wait_for(killer, 5)
    finally:
        stop_agents(agents)
    first, second = summary.rounds
    assert first.dropouts == ["agent-1", "agent-4"]
    assert first.survivors == ["agent-0", "agent-2", "agent-3", "agent-5"]
    assert first.model_version == 1
    assert second.survivors == first.survivors
    assert second.model_version == 2
    assert second.accuracy is not None
    assert second.accuracy > 0.5
    closed = {
        (e["stage"], tuple(e["dropouts"])) for e in logs if e["event"] == "secagg_stage_closed"
    }
    # round 1: lost after sharing keys
    assert ("collect_masked_input", ("agent-1", "agent-4")) in closed
    # MQTT: their last wills said offline, so round 2's cohort leaves them out. NATS (no
    # will): they let round 1's collect deadline pass and showed no life since, which leaves
    # them out too, unless one of their last messages reached the aggregator after that
    # deadline on a loaded machine (seen once in a full suite run): then it is sampled and
    # is round 2's dropout, never a survivor (checked above).
    if broker.kind == "mqtt":
        assert second.cohort == first.survivors
        # their wills came after their shares: the masked inputs are not waited for
        # (secure_round: an offline member is out of every later stage of its round)
        masked = next(
            e
            for e in logs
            if e["event"] == "secagg_stage_closed" and e["stage"] == "collect_masked_input"
        )
        assert not masked["timed_out"], masked
    else:
        assert set(first.survivors) <= set(second.cohort) <= set(first.cohort)
