"""The fleet half of the fault suite (issue 14, "Done means"), on real brokers.

Each scenario runs one federation against a fresh mosquitto or nats-server and returns a
JSON-able dict of what it measured; ``SCENARIOS`` maps a name to a no-argument coroutine
function (``bench/faults.py`` discovers this module). ``tests/test_fleet_faults.py`` runs the
same scenarios, small. Run alone: ``python bench/fault_scenarios/fleet.py [NAME ...]`` prints
one JSON line per scenario.

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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from structlog.testing import capture_logs

from agent.brokers import BrokerKind, EmbeddedBroker
from agent.bus.base import Bus, BusSettings
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
from agent.messages import topics
from agent.messages.bodies import JoinRequest
from agent.messages.codec import encode
from agent.plugin.api import EvaluateResult, FitResult, PluginContext, Scalar, Weights
from agent.plugin.loader import CheckedPlugin, load_plugin
from agent.role import Role
from agent.roles.aggregator import Aggregator
from agent.roles.aggregator.records import RoundRecord, RunSummary
from agent.roles.trainer import Trainer

FED = "fleet"
FAST = {"backoff_initial": 0.05, "backoff_max": 1.0, "publish_timeout": 10.0}
Json = dict[str, Any]


class Constant:
    """A plugin whose fit returns weights filled with ``value`` after ``fit_seconds`` (in the
    fit's worker thread): cheap, and FedAvg is exact."""

    def __init__(
        self,
        value: float,
        n: int = 10,
        *,
        fit_seconds: float = 0.0,
        gate: threading.Event | None = None,
    ) -> None:
        self.value, self.n, self.fit_seconds, self.gate = value, n, fit_seconds, gate

    def get_weights(self) -> Weights:
        return [np.zeros((16, 8), np.float32), np.zeros(8, np.float32)]

    def num_examples(self) -> int:
        return self.n

    def fit(self, weights: Weights, config: Mapping[str, Scalar]) -> FitResult:
        del config
        time.sleep(self.fit_seconds)
        if self.gate is not None:
            self.gate.wait(60)  # e.g. until the flood is over: the round stays open meanwhile
        return FitResult([np.full_like(w, self.value) for w in weights], self.n, {})

    def evaluate(self, weights: Weights, config: Mapping[str, Scalar]) -> EvaluateResult:
        del config
        return EvaluateResult(float(np.mean(weights[0])), self.n, {"accuracy": 0.5})


def schedule(**kw: Any) -> AggregatorConfig:
    base: dict[str, Any] = {
        "rounds": 3,
        "min_fit_clients": 2,
        "join_timeout": 30.0,
        "round_timeout": 8.0,
        "eval_timeout": 8.0,
    }
    return AggregatorConfig(**{**base, **kw})


def agent_config(agent_id: str, url: str, work: Path, *, plugin: str = "constant") -> AgentConfig:
    return AgentConfig(
        role=Role.TRAINER,
        agent_id=agent_id,
        federation=FED,
        bus_url=url,
        state_dir=work / agent_id,
        plugin=PluginConfig(name=plugin),
        trainer=TrainerConfig(join_retry=0.3, model_wait=10.0, heartbeat=2.0),
    )


def aggregator(
    url: str, work: Path, sched: AggregatorConfig, plugin: str = "constant"
) -> AgentConfig:
    return AgentConfig(
        role=Role.AGGREGATOR,
        agent_id="aggregator",
        federation=FED,
        bus_url=url,
        state_dir=work / "aggregator",
        plugin=PluginConfig(name=plugin),
        aggregator=sched,
    )


class Hooks:
    """A ``RoundObserver`` that runs ``on_start(round)`` as a task of the running loop."""

    def __init__(self, on_start: Callable[[int], Awaitable[None]] | None = None) -> None:
        self._on_start = on_start
        self.tasks: list[asyncio.Task[None]] = []
        self.started: dict[int, float] = {}

    def round_started(self, round: int, cohort: Sequence[str]) -> None:
        del cohort
        self.started[round] = time.monotonic()
        if self._on_start is not None:
            self.tasks.append(asyncio.get_running_loop().create_task(self._on_start(round)))

    def round_finished(self, record: RoundRecord) -> None:
        del record


async def federate(
    broker: EmbeddedBroker,
    work: Path,
    sched: AggregatorConfig,
    *,
    honest: int,
    hooks: Hooks | None = None,
    extra: Callable[[], Awaitable[None]] | None = None,
    fit_seconds: float = 0.0,
    gate: threading.Event | None = None,
) -> tuple[RunSummary, list[dict[str, Any]]]:
    """``honest`` in-process trainers (``Constant``) and the aggregator on ``broker``; ``extra``
    runs beside them (a silent agent, a flooder) and is cancelled at the end."""
    buses: list[Bus] = []
    tasks: list[asyncio.Task[Any]] = []
    with capture_logs() as logs:
        try:
            for i in range(honest):
                agent_id = f"agent-{i}"
                bus = bus_from_url(broker.url, BusSettings(client_id=agent_id, **FAST))  # type: ignore[arg-type]
                await bus.__aenter__()
                buses.append(bus)
                trainer = Trainer(
                    config=agent_config(agent_id, broker.url, work),
                    bus=bus,
                    plugin=CheckedPlugin(
                        "constant", Constant(float(i), fit_seconds=fit_seconds, gate=gate)
                    ),
                )
                tasks.append(asyncio.create_task(trainer.run()))
            if extra is not None:
                tasks.append(asyncio.create_task(extra()))
            agg_bus = bus_from_url(broker.url, BusSettings(client_id="aggregator", **FAST))  # type: ignore[arg-type]
            await agg_bus.__aenter__()
            buses.append(agg_bus)
            summary = await Aggregator(
                config=aggregator(broker.url, work, sched),
                bus=agg_bus,
                plugin_name="constant",
                initial_weights=Constant(0).get_weights(),
                observer=hooks,
            ).run()
        finally:
            for task in [*tasks, *(hooks.tasks if hooks else [])]:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for bus in buses:
                await bus.__aexit__(None, None, None)
    return summary, list(logs)


def waited_rounds(logs: list[dict[str, Any]]) -> list[int]:
    """Rounds in which the aggregator waited until a deadline for someone (captured logs
    carry no context variables: the round is counted from ``round_started`` lines)."""
    events = ("agents_missed_deadline", "evaluation_incomplete")
    current, waited = 0, set()
    for e in logs:
        if e["event"] == "round_started":
            current += 1
        elif e["event"] in events:
            waited.add(current)
    return sorted(waited)


def _rounds(summary: RunSummary) -> list[Json]:
    return [
        {
            "round": r.round,
            "cohort": len(r.cohort),
            "survivors": len(r.survivors),
            "seconds": round(r.seconds, 3),
            "model_version": r.model_version,
        }
        for r in summary.rounds
    ]


# -- scenarios -----------------------------------------------------------------------------


async def silent_agent(
    broker: EmbeddedBroker, work: Path, *, honest: int = 4, rounds: int = 3
) -> Json:
    """An agent joins (and is admitted) and then never sends anything again."""

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

    sched = schedule(rounds=rounds, min_available_clients=honest + 1, fraction_fit=1.0)
    summary, logs = await federate(broker, work, sched, honest=honest, extra=silent)
    return {
        "broker": broker.kind,
        "rounds": _rounds(summary),
        "waited_full_deadline": waited_rounds(logs),
        "silent_in_cohort": [r.round for r in summary.rounds if "silent" in r.cohort],
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

    sched = schedule(rounds=rounds, min_available_clients=honest + 1)
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
    return {
        "broker": broker.kind,
        "flood_messages": messages,
        "flood_seconds": round(sent.get("seconds", float("nan")), 3),
        "round_1_seconds": round(first.seconds, 3),
        "rounds": _rounds(summary),
        "honest_survivors_round_1": len(honest_ids & set(first.survivors)),
        "honest": honest,
        "bus_queue_full": sum(e["event"] == "bus_queue_full" for e in logs),
        "shed_by_sender_at_least": shed,
        "joins_answered_mallory": sum(
            e["event"] == "agent_admitted" and e.get("agent") == "mallory" for e in logs
        ),
        "honest_dropped": sum(
            e["event"] in ("message_dropped", "message_shed") and e.get("sender") in honest_ids
            for e in logs
        ),
    }


async def broker_restart(
    broker: EmbeddedBroker,
    work: Path,
    *,
    honest: int = 5,
    rounds: int = 3,
    restart_round: int = 2,
    delay: float = 0.5,
    fit_seconds: float = 1.0,
    down: float = 1.5,
    kill: bool = True,
) -> Json:
    """SecAgg+; each fit takes ``fit_seconds``; the broker is SIGKILLed (``kill``; else
    SIGTERM) ``delay`` s into round ``restart_round`` (the keys exchanged, the masked inputs
    not yet sent) and started again on the same port ``down`` s later (its persistence
    kept): the masked inputs are published while it is down, and the agents come back one
    by one, each on its own backoff."""
    restarted: dict[str, float] = {}

    async def restart(r: int) -> None:
        if r != restart_round:
            return
        await asyncio.sleep(delay)
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
    return {
        "broker": broker.kind,
        "signal": "SIGKILL" if kill else "SIGTERM",
        "down_seconds": round(restarted.get("down_seconds", float("nan")), 3),
        "rounds": _rounds(summary),
        "restart_round_survivors": len(summary.rounds[restart_round - 1].survivors),
        "honest": honest,
        "secagg_aborted": sum(e["event"] == "secagg_aborted" for e in logs),
        "reconnects": sum(e["event"] == "bus_connected" and bool(e.get("reconnect")) for e in logs),
    }


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
        config = _digits(config, i, agents)
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
    return {
        "broker": broker.kind,
        "agents": agents,
        "killed": len(killed),
        "rounds": _rounds(summary),
        "waited_full_deadline": waited_rounds(logs),
        "killed_in_cohort_after_round_1": sorted(
            {r.round for r in summary.rounds[1:] if killed & set(r.cohort)}
        ),
        "final_accuracy": summary.rounds[-1].accuracy,
        "round_timeout": sched.round_timeout,
    }


def _digits(config: AgentConfig, i: int, n: int) -> AgentConfig:
    import msgspec

    options = {"agent_index": i, "num_agents": n, "partition": "iid"}
    return msgspec.structs.replace(config, plugin=PluginConfig(name="digits-mlp", options=options))


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
