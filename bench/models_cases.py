"""The child processes of bench/models.py (one per aggregator, trainer and raw publisher)
and the toy model they train; each writes its result as JSON to ``--out``.

The aggregator child patches timing probes over the reassembly and the rounds: per round,
when its first update manifest came (``first``), when each update's last chunk was kept
(``complete``) and when it was folded in (``folded``), so the update transfer's span and
where its time goes are measured in the process that receives it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
from models_profile import rss_traced, traced

from agent.bus.base import BusSettings
from agent.bus.url import bus_from_url
from agent.config import (
    AgentConfig,
    AggregatorConfig,
    PluginConfig,
    SecAggConfig,
    SecureAggregation,
    TrainerConfig,
    TransferConfig,
)
from agent.node import bus_settings
from agent.plugin.api import EvaluateResult, FitResult, Weights
from agent.plugin.loader import CheckedPlugin
from agent.robust.settings import RobustConfig
from agent.role import Role

LAYER = 1 << 22  # parameters per array: a model of d parameters is ⌈d / 4M⌉ arrays
MB = 1_000_000


def shapes(d: int) -> list[tuple[int, ...]]:
    return [(min(LAYER, d - start),) for start in range(0, d, LAYER)]


class Constant:
    """fit returns the model filled with ``value``; evaluate reports its mean."""

    def __init__(self, d: int, value: float) -> None:
        self.d, self.value = d, value

    def get_weights(self) -> Weights:
        return [np.zeros(s, np.float32) for s in shapes(self.d)]

    def fit(self, weights: Weights, config: Any) -> FitResult:
        return FitResult([np.full_like(w, self.value) for w in weights], 10, {})

    def evaluate(self, weights: Weights, config: Any) -> EvaluateResult:
        return EvaluateResult(float(weights[0][0]), 10, {})


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def config_for(args: argparse.Namespace, role: Role, agent_id: str) -> AgentConfig:
    secure = args.mode == "secagg+"
    return AgentConfig(
        role=role,
        agent_id=agent_id,
        federation="bench",
        bus_url=args.url,
        state_dir=Path(args.state) / agent_id,
        plugin=PluginConfig(name="bench"),
        # the default join retry: a retry while the model is still on its way to the
        # trainer's inbox makes the aggregator push the whole model again
        trainer=TrainerConfig(model_wait=600.0),
        transfer=TransferConfig(chunk_size=args.chunk_size, timeout=600.0),
        aggregator=AggregatorConfig(
            rounds=args.rounds,
            min_fit_clients=args.agents,
            min_available_clients=args.agents,
            join_timeout=120.0,
            round_timeout=900.0,
            eval_every=0,
            eval_timeout=120.0,
            secure_aggregation=SecureAggregation.SECAGG_PLUS if secure else SecureAggregation.NONE,
            secagg=SecAggConfig(stage_timeout=600.0),
            # the default robust bounds (the plain mean streams with the relative norm
            # bound), but no model-change guard (the constant toy models jump)
            robust=RobustConfig(max_change_factor=0.0),
        ),
    )


async def aggregator_child(args: argparse.Namespace) -> dict[str, Any]:
    from agent.roles.aggregator import Aggregator
    from agent.roles.aggregator.plain_round import PlainRound
    from agent.roles.aggregator.secure_round import SecureRound
    from agent.runtime.reassembly import Reassembly

    first: dict[int, float] = {}  # round → when its first update manifest came
    # (round, sender) → [manifest in, last chunk kept, folded in], time.monotonic()
    spans: dict[tuple[int, str], list[float]] = {}
    begin, plain, secure = Reassembly.begin, PlainRound._keep, SecureRound.on_masked_input

    # round → [(event, seconds after the round's first update manifest)]: where a round's
    # update transfer time goes (manifest in, last chunk kept, update folded)
    events: dict[int, list[tuple[str, float]]] = {}
    settle = Reassembly.settle

    def note(event: str, sender: str, slot: int) -> None:
        if first:
            r, now = max(first), time.monotonic()
            events.setdefault(r, []).append((event, round(now - first[r], 3)))
            span = spans.setdefault((r, sender), [now, now, now])
            span[slot:] = [now] * (3 - slot)

    def on_begin(self: Any, topic: str, envelope: Any, *a: Any, **k: Any) -> Any:
        if "/update/" in topic:
            first.setdefault(envelope.round, time.monotonic())
            note("manifest", topic.rsplit("/", 1)[-1], 0)
        return begin(self, topic, envelope, *a, **k)

    def on_settle(self: Any, pending: Any, **k: Any) -> Any:
        transfer = settle(self, pending, **k)
        if transfer is not None and not transfer.missing and "/update/" in transfer.topic:
            note("complete", transfer.topic.rsplit("/", 1)[-1], 1)
        return transfer

    def done(inner: Any) -> Any:
        def wrapped(self: Any, sender: str, *a: Any) -> Any:
            result = inner(self, sender, *a)
            note("folded", sender, 2)
            return result

        return wrapped

    Reassembly.begin = on_begin  # type: ignore[method-assign]
    Reassembly.settle = on_settle  # type: ignore[method-assign]
    PlainRound._keep = done(plain)  # type: ignore[method-assign]
    SecureRound.on_masked_input = done(secure)  # type: ignore[method-assign]
    config = config_for(args, Role.AGGREGATOR, "aggregator")
    async with bus_from_url(args.url, bus_settings(config)) as bus:
        aggregator = Aggregator(
            config=config,
            bus=bus,
            plugin_name="bench",
            initial_weights=Constant(args.d, 0).get_weights(),
        )
        summary = await aggregator.run()
        chunk_bytes = aggregator.metrics.bytes_received.labels("chunk")._value.get()
    rounds = summary.rounds
    updates = sum(len(r.survivors) for r in rounds)
    return {
        "rounds": len(rounds),
        "survivors": [len(r.survivors) for r in rounds],
        "seconds_per_round": sum(r.seconds for r in rounds) / max(1, len(rounds)),
        "round_seconds": [r.seconds for r in rounds],
        "update_bytes": chunk_bytes,
        "updates": updates,
        "update_seconds": busy([(a, c) for a, _, c in spans.values()]),
        "transfer_seconds": busy([(a, b) for a, b, _ in spans.values()]),
        "peak_rss": peak_rss(),
        "timeline": {str(r): e for r, e in events.items()},
    }


async def trainer_child(args: argparse.Namespace) -> dict[str, Any]:
    from agent.roles.trainer import Trainer

    config = config_for(args, Role.TRAINER, args.agent_id)
    plugin = CheckedPlugin("bench", Constant(args.d, float(args.value)))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with bus_from_url(args.url, bus_settings(config)) as bus:
        trainer = Trainer(config=config, bus=bus, plugin=plugin)
        task = asyncio.create_task(trainer.run())
        await stop.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return {"peak_rss": peak_rss()}


async def raw_child(args: argparse.Namespace) -> dict[str, Any]:
    """Publish ``args.nbytes`` in chunk-size random payloads, up to 8 in flight."""
    payload = os.urandom(args.chunk_size)
    count = -(-args.nbytes // args.chunk_size)
    gate = asyncio.Semaphore(8)
    async with bus_from_url(args.url, BusSettings(client_id=f"raw-{args.agent_id}")) as bus:
        await bus.wait_connected(timeout=30)
        Path(args.out).with_suffix(".ready").touch()
        await asyncio.to_thread(wait_for, Path(args.go))

        async def one() -> None:
            async with gate:
                await bus.publish(f"raw/{args.agent_id}", payload)

        async with asyncio.TaskGroup() as tg:
            for _ in range(count):
                tg.create_task(one())
    return {"published": count * len(payload)}


def busy(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by at least one of ``intervals`` (their union's length): the time some
    update was in flight, without the gaps where none was (a trainer still waiting for the
    model, the round's other stages)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def wait_for(path: Path) -> None:
    while not path.exists():
        time.sleep(0.01)


def child_main(args: argparse.Namespace) -> None:
    run = {"aggregator": aggregator_child, "trainer": trainer_child, "raw": raw_child}
    profile = os.environ.get("FEDBUS_BENCH_PROFILE")  # a directory: cProfile each child there
    if profile:
        import cProfile

        with cProfile.Profile() as prof:
            result = asyncio.run(run[args.child](args))
        prof.dump_stats(Path(profile) / f"{args.child}-{args.agent_id or 'agg'}.prof")
    elif os.environ.get("FEDBUS_BENCH_RSS") and args.child == "aggregator":
        result = rss_traced(lambda: asyncio.run(run[args.child](args)))
    elif os.environ.get("FEDBUS_BENCH_TRACEMALLOC") and args.child == "aggregator":
        result = traced(lambda: asyncio.run(run[args.child](args)))
    else:
        result = asyncio.run(run[args.child](args))
    Path(args.out).write_text(json.dumps(result))
