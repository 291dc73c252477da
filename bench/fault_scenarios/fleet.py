"""The fleet half of the fault suite (issue 14, "Done means"), on real brokers.

Each scenario runs one federation against a fresh mosquitto or nats-server and returns a
JSON-able dict of what it measured; ``SCENARIOS`` maps a name to a no-argument coroutine
function (``bench/faults.py`` discovers this module). ``tests/test_fleet_faults.py`` runs the
same scenarios, small. Run alone: ``python -m bench.fault_scenarios.fleet [NAME ...]`` prints
one JSON line per scenario; ``ok`` is the scenario's verdict.

- ``silent_*``: an admitted agent that never sends another message; no round after the first
  waits a full deadline for it (it missed round 1's, and shows no life since).
- ``sigkill_*``: 30 % of the agent *processes* SIGKILLed in the middle of round 1; no later
  round waits a full deadline for them (MQTT: their wills; NATS: the missed deadline).
- ``flood_*``: one device floods 2,000 joins during a round; no honest message is dropped
  (no ``bus_queue_full``, every honest member survives), the round completes.
- ``restart_*``: the broker SIGKILLed and restarted in the middle of a SecAgg+ round; that
  round completes with every member.

"A round waited a full deadline" is read from the aggregator's log, not from a clock: a round
(or its evaluation) waits until a deadline only when some member it waits for never answered,
and exactly then it logs ``agents_missed_deadline`` (or ``evaluation_incomplete``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from agent.brokers import BrokerKind, EmbeddedBroker
from agent.bus.base import BusSettings
from agent.bus.url import bus_from_url
from agent.config import SecAggConfig, SecureAggregation
from agent.demo.processes import AgentProcess, start_agent, stop_agents
from agent.messages import topics
from agent.messages.bodies import JoinRequest
from agent.messages.codec import encode
from agent.plugin.api import PluginContext
from agent.plugin.loader import CheckedPlugin, load_plugin
from agent.roles.aggregator import Aggregator
from agent.roles.trainer import Trainer
from bench.fault_scenarios._fleet import (
    FAST,
    FED,
    Constant,
    Hooks,
    Json,
    agent_config,
    aggregator,
    digits_config,
    federate,
    rounds_of,
    schedule,
    waited_rounds,
)

# -- scenarios -----------------------------------------------------------------------------


async def silent_agent(
    broker: EmbeddedBroker,
    work: Path,
    *,
    honest: int = 4,
    rounds: int = 3,
    over_selection: float = 0.0,
) -> Json:
    """An agent joins (and is admitted) and then never sends anything again. With
    ``over_selection`` > 0 the cohort needed is ``honest`` (``fraction_fit`` of the
    admitted, over-selected back to all of them), so not even round 1 waits for it."""

    async def silent() -> None:
        settings = BusSettings(client_id="silent", **FAST)  # type: ignore[arg-type]
        async with bus_from_url(broker.url, settings) as bus:
            await bus.subscribe(topics.INBOX.format(FED, "silent"))
            await bus.wait_connected(10)
            body = JoinRequest(agent_id="silent", plugin="constant", num_examples=10)
            inbox = bus.messages()
            while True:  # join until the aggregator answers (it may not listen yet)
                payload = encode(body, federation=FED, round=0, sender="silent")
                await bus.publish(topics.JOIN.format(FED), payload)
                try:
                    async with asyncio.timeout(0.5):
                        await anext(inbox)
                    break
                except TimeoutError:
                    continue
            await asyncio.Event().wait()  # connected, admitted, mute

    fraction = honest / (honest + 1) if over_selection else 1.0
    sched = schedule(
        rounds=rounds,
        min_available_clients=honest + 1,
        fraction_fit=fraction,
        over_selection=over_selection,
    )
    summary, logs = await federate(broker, work, sched, honest=honest, extra=silent)
    waited = waited_rounds(logs)
    sampled = [r.round for r in summary.rounds if "silent" in r.cohort]
    return {
        # over-selected, the silent agent is sampled (it never cost a deadline) but not awaited
        "ok": (not waited if over_selection else set(waited) <= {1} and set(sampled) <= {1})
        and all(len(r.survivors) == honest for r in summary.rounds),
        "broker": broker.kind,
        "rounds": rounds_of(summary),
        "waited_full_deadline": waited,
        "silent_in_cohort": sampled,
        "round_timeout": sched.round_timeout,
    }


async def flood(
    broker: EmbeddedBroker, work: Path, *, honest: int = 4, messages: int = 2000, rounds: int = 2
) -> Json:
    """One admitted device ("mallory", also a trainer) sends ``messages`` joins as fast as the
    broker takes them, starting as round 1 starts; the honest agents' round-1 fits finish only
    once the flood is over, so their updates arrive behind it, in the same round."""
    sent: dict[str, float] = {}
    over = threading.Event()

    async def flood_now(r: int) -> None:
        if r != 1:
            return
        settings = BusSettings(client_id="mallory-flood", **FAST)  # type: ignore[arg-type]
        async with bus_from_url(broker.url, settings) as bus:
            await bus.wait_connected(10)
            started = time.monotonic()
            body = JoinRequest(agent_id="mallory", plugin="constant", num_examples=10)
            for _ in range(messages):
                payload = encode(body, federation=FED, round=0, sender="mallory")
                await bus.publish(topics.JOIN.format(FED), payload)
            sent["seconds"] = time.monotonic() - started
        over.set()

    async def mallory() -> None:
        settings = BusSettings(client_id="mallory", **FAST)  # type: ignore[arg-type]
        async with bus_from_url(broker.url, settings) as bus:
            trainer = Trainer(
                config=agent_config("mallory", broker.url, work),
                bus=bus,
                plugin=CheckedPlugin("constant", Constant(100.0)),
            )
            await trainer.run()

    # The honest fits wait for the flood: a deadline long enough for a slow (loaded) machine.
    sched = schedule(rounds=rounds, min_available_clients=honest + 1, round_timeout=30.0)
    hooks = Hooks(flood_now)
    summary, logs = await federate(
        broker, work, sched, honest=honest, hooks=hooks, extra=mallory, gate=over
    )
    first = summary.rounds[0]
    honest_ids = {f"agent-{i}" for i in range(honest)}
    shed: dict[str, int] = {}
    for e in logs:
        if e["event"] == "message_shed":
            shed[e["sender"]] = max(shed.get(e["sender"], 0), int(e["shed"]))
    queue_full = sum(e["event"] == "bus_queue_full" for e in logs)
    honest_dropped = sum(
        e["event"] in ("message_dropped", "message_shed") and e.get("sender") in honest_ids
        for e in logs
    )
    survivors = len(honest_ids & set(first.survivors))
    return {
        "ok": queue_full == 0 and honest_dropped == 0 and survivors == honest,
        "broker": broker.kind,
        "flood_messages": messages,
        "flood_seconds": round(sent.get("seconds", float("nan")), 3),
        "round_1_seconds": round(first.seconds, 3),
        "rounds": rounds_of(summary),
        "honest_survivors_round_1": survivors,
        "honest": honest,
        "bus_queue_full": queue_full,
        "shed_by_sender_at_least": shed,
        "joins_answered_mallory": sum(
            e["event"] == "agent_admitted" and e.get("agent") == "mallory" for e in logs
        ),
        "honest_dropped": honest_dropped,
    }


async def broker_restart(
    broker: EmbeddedBroker,
    work: Path,
    *,
    honest: int = 5,
    rounds: int = 3,
    restart_round: int = 2,
    delay: float = 0.5,
    fit_seconds: float = 3.0,
    down: float = 1.5,
    kill: bool = True,
) -> Json:
    """SecAgg+; each fit takes ``fit_seconds``; the broker is SIGKILLed (``kill``; else
    SIGTERM) ``delay`` s into round ``restart_round``, while the cohort trains (mosquitto no
    earlier than its first autosave after round 1 started: a SIGKILL loses what changed
    after the last one), and started again on the same port ``down`` s later, its
    persistence kept. The agents come back one by one, each on its own backoff."""
    restarted: dict[str, float] = {}

    saved_from: list[int] = []

    async def restart(r: int) -> None:
        if r == 1:  # every session and subscription exists by now
            saved_from.append(broker.log_path.stat().st_size)
        if r != restart_round:
            return
        started = time.monotonic()
        if kill and broker.kind == "mqtt":
            # A SIGKILL loses what changed since mosquitto's last autosave: the documented
            # limit. The scenario is about a round in flight, so the sessions are saved first.
            await _saved_since(broker, saved_from[0])
        await asyncio.sleep(max(0.0, delay - (time.monotonic() - started)))
        started = time.monotonic()
        if kill and broker.pid is not None:
            os.kill(broker.pid, signal.SIGKILL)
        await asyncio.to_thread(broker.stop)
        await asyncio.sleep(down)
        await asyncio.to_thread(broker.start)
        restarted["down_seconds"] = time.monotonic() - started

    sched = schedule(
        rounds=rounds,
        min_available_clients=honest,
        min_fit_clients=3,
        round_timeout=20.0,
        secure_aggregation=SecureAggregation.SECAGG_PLUS,
        secagg=SecAggConfig(stage_timeout=8.0),
    )
    summary, logs = await federate(
        broker, work, sched, honest=honest, hooks=Hooks(restart), fit_seconds=fit_seconds
    )
    aborted = sum(e["event"] == "secagg_aborted" for e in logs)
    survivors = len(summary.rounds[restart_round - 1].survivors)
    return {
        "ok": aborted == 0 and survivors == honest,
        "broker": broker.kind,
        "signal": "SIGKILL" if kill else "SIGTERM",
        "down_seconds": round(restarted.get("down_seconds", float("nan")), 3),
        "rounds": rounds_of(summary),
        "restart_round_survivors": survivors,
        "honest": honest,
        "secagg_aborted": aborted,
        "reconnects": sum(e["event"] == "bus_connected" and bool(e.get("reconnect")) for e in logs),
    }


async def _saved_since(broker: EmbeddedBroker, offset: int, seconds: float = 10.0) -> None:
    """Until mosquitto logged a database save after byte ``offset`` of its log."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with broker.log_path.open("rb") as log_file:
            log_file.seek(offset)
            if b"Saving in-memory database" in log_file.read():
                return
        await asyncio.sleep(0.05)


async def sigkill_fraction(
    broker: EmbeddedBroker,
    work: Path,
    *,
    agents: int = 10,
    fraction: float = 0.3,
    rounds: int = 4,
    round_timeout: float = 15.0,
) -> Json:
    """``agents`` trainer processes (digits-mlp, 200 epochs a fit: about 1.5 s); ``fraction``
    of them SIGKILLed 0.5 s into round 1, while they train."""
    victims = max(1, round(agents * fraction))
    procs: list[AgentProcess] = []
    for i in range(agents):
        config = agent_config(f"agent-{i}", broker.url, work, plugin="digits-mlp")
        config = digits_config(config, i, agents)
        path = work / f"agent-{i}.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(config.to_toml())
        procs.append(start_agent(f"agent-{i}", path, work / "logs" / f"agent-{i}.log"))

    async def kill(r: int) -> None:
        if r == 1:
            await asyncio.sleep(0.5)
            for p in procs[:victims]:
                p.kill()

    sched = schedule(
        rounds=rounds,
        min_available_clients=agents,
        min_fit_clients=max(2, agents - victims),
        join_timeout=90.0,
        round_timeout=round_timeout,
        eval_timeout=round_timeout,
        fit_config={"epochs": 200},
    )
    initial = load_plugin(
        "digits-mlp", PluginContext("aggregator", {"agent_index": 0, "num_agents": agents})
    ).get_weights()
    hooks = Hooks(kill)
    try:
        with capture_logs() as captured:
            settings = BusSettings(client_id="aggregator", **FAST)  # type: ignore[arg-type]
            async with bus_from_url(broker.url, settings) as bus:
                summary = await Aggregator(
                    config=aggregator(broker.url, work, sched, plugin="digits-mlp"),
                    bus=bus,
                    plugin_name="digits-mlp",
                    initial_weights=initial,
                    observer=hooks,
                ).run()
        logs = list(captured)
    finally:
        for task in hooks.tasks:
            task.cancel()
        stop_agents(procs)
    killed = {p.agent_id for p in procs[:victims]}
    waited = waited_rounds(logs)
    resampled = sorted({r.round for r in summary.rounds[1:] if killed & set(r.cohort)})
    return {
        "ok": set(waited) <= {1}
        and not resampled
        and all(len(r.survivors) == agents - victims for r in summary.rounds[1:]),
        "broker": broker.kind,
        "agents": agents,
        "killed": len(killed),
        "rounds": rounds_of(summary),
        "waited_full_deadline": waited,
        "killed_in_cohort_after_round_1": resampled,
        "final_accuracy": summary.rounds[-1].accuracy,
        "round_timeout": sched.round_timeout,
    }


# -- the registry bench/faults.py discovers ------------------------------------------------


async def _fresh(kind: BrokerKind, scenario: Callable[..., Awaitable[Json]], **kw: Any) -> Json:
    with tempfile.TemporaryDirectory(prefix="fedbus-fleet-") as tmp, EmbeddedBroker(kind) as broker:
        started = time.monotonic()
        result = await scenario(broker, Path(tmp), **kw)
        return {**result, "wall_seconds": round(time.monotonic() - started, 2)}


SCENARIOS: dict[str, Callable[[], Awaitable[Json]]] = {
    f"{name}_{kind}": partial(_fresh, kind, scenario, **kw)
    for kind in ("mqtt", "nats")
    for name, scenario, kw in (
        ("silent_agent", silent_agent, {"honest": 8, "rounds": 4}),
        ("silent_overselect", silent_agent, {"honest": 8, "rounds": 4, "over_selection": 0.3}),
        ("sigkill_30pct", sigkill_fraction, {"agents": 10, "fraction": 0.3, "rounds": 4}),
        ("flood_2000", flood, {"honest": 8, "messages": 2000, "rounds": 3}),
        ("restart_secagg", broker_restart, {"honest": 8, "rounds": 4, "restart_round": 3}),
        ("restart_term_r2", broker_restart, {"honest": 8, "rounds": 3, "kill": False}),
    )
}


async def _main(names: Sequence[str]) -> None:
    for name in names or list(SCENARIOS):
        result = await SCENARIOS[name]()
        print(json.dumps({"scenario": name, **result}), flush=True)


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1:]))
