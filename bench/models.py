"""Benchmark: large models over both buses (issue 16). Prints JSON.

For each bus (nats-server, mosquitto, started here), model size d (float32 parameters) and
mode (plain FedAvg, SecAgg+), one aggregator and ``--agents`` trainers run as separate OS
processes over the broker, ``--rounds`` rounds, with a toy plugin whose ``fit`` returns a
constant model (training costs nothing, so the round is the protocol). Measured in the same
run, per case:

- ``seconds_per_round``: the aggregator's mean round time;
- ``update_bytes_per_param``: chunk bytes the aggregator received per parameter per update
  (float32: ≈ 4; a SecAgg+ masked input: 4 or 8, the ring word);
- ``aggregator_peak_rss`` / ``agent_peak_rss`` (bytes, VmHWM) and, beside the first, the
  target ``4 x model bytes + 200 MB``;
- ``update_throughput``: update bytes the aggregator took in (reassembled, verified and
  folded) per second, from the first manifest of a round to its last update, against
  ``raw_throughput``: the same bytes in chunk-size payloads published by ``--agents``
  processes at once through the same bus adapter (same client library) to one subscriber
  that only counts them; ``throughput_ratio`` = update / raw.

    .venv/bin/python bench/models.py [--sizes 1e6 1e7 5e7] [--buses nats mqtt]
        [--modes plain secagg+] [--agents 3] [--wide 10] [--rounds 2]

``--wide N`` adds a plain case with N agents at 10M (the aggregator's RSS whatever the cohort).
With ``FEDBUS_BENCH_PROFILE=DIR`` each child process writes its cProfile stats to DIR;
``FEDBUS_BENCH_LOGS=DIR`` keeps the children's logs there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

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
    TransferConfig,
)
from agent.messages.chunks import chunking_plan
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
        trainer=TrainerConfig(join_retry=0.5, model_wait=600.0),
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
    last: dict[int, float] = {}  # round → when its last update was folded in
    begin, plain, secure = Reassembly.begin, PlainRound._keep, SecureRound.on_masked_input

    # round → [(event, seconds after the round's first update manifest)]: where a round's
    # update transfer time goes (manifest in, last chunk kept, update folded)
    events: dict[int, list[tuple[str, float]]] = {}
    add = Reassembly.add

    def note(event: str) -> None:
        if first:
            r = max(first)
            events.setdefault(r, []).append((event, round(time.monotonic() - first[r], 3)))

    def on_begin(self: Any, topic: str, envelope: Any, *a: Any, **k: Any) -> Any:
        if "/update/" in topic:
            first.setdefault(envelope.round, time.monotonic())
            note("manifest")
        return begin(self, topic, envelope, *a, **k)

    def on_add(self: Any, topic: str, *a: Any, **k: Any) -> Any:
        transfer = add(self, topic, *a, **k)
        if transfer is not None and not transfer.missing and "/update/" in topic:
            note("complete")
        return transfer

    def done(inner: Any) -> Any:
        def wrapped(self: Any, *a: Any) -> Any:
            result = inner(self, *a)
            if first:
                last[max(first)] = time.monotonic()
                note("folded")
            return result

        return wrapped

    Reassembly.begin = on_begin  # type: ignore[method-assign]
    Reassembly.add = on_add  # type: ignore[method-assign]
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
    spans = [last[r] - first[r] for r in first if r in last]
    updates = sum(len(r.survivors) for r in rounds)
    return {
        "rounds": len(rounds),
        "survivors": [len(r.survivors) for r in rounds],
        "seconds_per_round": sum(r.seconds for r in rounds) / max(1, len(rounds)),
        "update_bytes": chunk_bytes,
        "updates": updates,
        "update_seconds": sum(spans),
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


def rss_traced(main: Any) -> Any:
    """Run ``main`` sampling VmRSS every 20 ms; at each new peak (5 MB above the last),
    write every thread's innermost ``agent/`` frames to ``$FEDBUS_BENCH_RSS`` (where the
    resident set grows; a profiling aid, not part of the JSON)."""
    import threading
    import traceback

    lines: list[str] = []
    best = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            rss = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGESIZE")
            if rss > best[0] + 5 * MB:
                best[0] = rss
                lines.append(f"rss {rss / MB:.0f} MB")
                for frame in sys._current_frames().values():
                    ours = [f for f in traceback.extract_stack(frame) if "/agent/" in f.filename]
                    lines.extend(
                        f"    {f.filename.split('/agent/')[-1]}:{f.lineno} {f.name}"
                        for f in ours[-3:]
                    )

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        return main()
    finally:
        stop.set()
        thread.join()
        Path(os.environ["FEDBUS_BENCH_RSS"]).write_text("\n".join(lines))


def traced(main: Any) -> Any:
    """Run ``main`` under tracemalloc; write the top allocations at the traced peak to
    ``$FEDBUS_BENCH_TRACEMALLOC`` (a profiling aid, not part of the JSON)."""
    import threading
    import tracemalloc

    tracemalloc.start(8)
    best: list[Any] = [0, None]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            current, _ = tracemalloc.get_traced_memory()
            if current > best[0] + 5 * MB:
                best[:] = [current, tracemalloc.take_snapshot()]

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        return main()
    finally:
        stop.set()
        thread.join()
        lines = [f"peak traced {best[0] / MB:.1f} MB"]
        if best[1] is not None:
            for stat in best[1].statistics("traceback")[:12]:
                lines.append(f"{stat.size / MB:8.1f} MB")
                lines += [f"    {frame}" for frame in stat.traceback.format()[-8:]]
        Path(os.environ["FEDBUS_BENCH_TRACEMALLOC"]).write_text("\n".join(lines))


def spawn(args: argparse.Namespace, child: str, out: Path, **extra: Any) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, __file__, "--child", child, "--out", str(out)]
    for key, value in {**vars(args), **extra}.items():
        if key in {"child", "out", "sizes", "buses", "modes", "wide"} or value is None:
            continue
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    log = open(out.with_suffix(".log"), "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


async def raw_throughput(args: argparse.Namespace, url: str, tmp: Path, nbytes: int) -> float:
    """Bytes per second of a raw publish → receive of ``agents x nbytes``."""
    go = tmp / "go"
    got, first, last = 0, 0.0, 0.0
    total = args.agents * -(-nbytes // args.chunk_size) * args.chunk_size
    settings = BusSettings(client_id="raw-sub", max_payload=args.chunk_size + MB)
    async with bus_from_url(url, settings) as bus:
        await bus.subscribe("raw/#")
        await bus.wait_connected(timeout=30)
        procs = [
            spawn(
                args, "raw", tmp / f"raw-{i}.json", url=url, agent_id=f"p{i}", nbytes=nbytes, go=go
            )
            for i in range(args.agents)
        ]
        for i in range(args.agents):  # every publisher connected before any starts
            await asyncio.to_thread(wait_for, tmp / f"raw-{i}.ready")
        go.touch()
        async with asyncio.timeout(600):
            async for message in bus.messages():
                now = time.monotonic()
                first = first or now
                got += len(message.payload)
                last = now
                if got >= total:
                    break
        for p in procs:
            p.wait(60)
    for path in (go, *(tmp / f"raw-{i}.ready" for i in range(args.agents))):
        path.unlink()
    return got / max(last - first, 1e-9)


def run_case(
    args: argparse.Namespace, url: str, tmp: Path, d: int, mode: str, agents: int
) -> dict[str, Any]:
    case = argparse.Namespace(**{**vars(args), "d": d, "mode": mode, "agents": agents, "url": url})
    case.state = str(tmp / f"{mode}-{d}-{agents}")
    trainers = [
        spawn(case, "trainer", tmp / f"t{i}.json", agent_id=f"agent-{i}", value=i + 1)
        for i in range(agents)
    ]
    started = time.perf_counter()
    agg = spawn(case, "aggregator", tmp / "agg.json")
    code = agg.wait(args.case_timeout)
    wall = time.perf_counter() - started
    for p in trainers:
        p.send_signal(signal.SIGTERM)
    for p in trainers:
        p.wait(60)
    if keep := os.environ.get("FEDBUS_BENCH_LOGS"):  # a directory: keep the children's logs
        for log in tmp.glob("*.log"):
            (Path(keep) / f"{mode}-{d}-{agents}-{log.name}").write_bytes(log.read_bytes())
    if code != 0:
        return {"failed": f"aggregator exit {code}", "log": str(tmp / "agg.log")}
    result = json.loads((tmp / "agg.json").read_text())
    model_bytes = 4 * d
    agent_rss = [json.loads((tmp / f"t{i}.json").read_text())["peak_rss"] for i in range(agents)]
    update_bytes_each = result["update_bytes"] / max(1, result["updates"])
    raw = asyncio.run(raw_throughput(case, url, tmp, int(update_bytes_each)))
    per_round_bytes = result["update_bytes"] / max(1, result["rounds"])
    throughput = (
        result["update_bytes"] / result["update_seconds"] if result["update_seconds"] else 0.0
    )
    return {
        "d": d,
        "mode": mode,
        "agents": agents,
        "wall_seconds": round(wall, 2),
        "survivors": result["survivors"],
        "seconds_per_round": round(result["seconds_per_round"], 3),
        "chunks_per_update": chunking_plan(int(update_bytes_each), args.chunk_size).chunks,
        "update_bytes_per_param": round(update_bytes_each / d, 4),
        "round_bytes_in": int(per_round_bytes),
        "aggregator_peak_rss": result["peak_rss"],
        "aggregator_rss_target": model_bytes * 4 + 200 * MB,
        "agent_peak_rss": max(agent_rss),
        "update_throughput": round(throughput),
        "raw_throughput": round(raw),
        "throughput_ratio": round(throughput / raw, 3) if raw else None,
        "timeline": result["timeline"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e6, 1e7, 5e7])
    parser.add_argument("--buses", nargs="+", default=["nats", "mqtt"])
    parser.add_argument("--modes", nargs="+", default=["plain", "secagg+"])
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--wide", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=TransferConfig().chunk_size)
    parser.add_argument("--case-timeout", type=float, default=1200.0)
    # child processes
    for name in ("child", "out", "url", "state", "mode", "agent-id", "go"):
        parser.add_argument(f"--{name}")
    for name in ("d", "value", "nbytes"):
        parser.add_argument(f"--{name}", type=int)
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return
    results: dict[str, Any] = {"agents": args.agents, "rounds": args.rounds, "cases": []}
    results["chunk_size"] = args.chunk_size
    results["cpus"] = os.cpu_count()
    for bus in args.buses:
        with EmbeddedBroker(bus) as broker, tempfile.TemporaryDirectory() as tmp:
            cases = [(int(d), m, args.agents) for d in args.sizes for m in args.modes]
            if args.wide and 1e7 in args.sizes:
                cases.append((10_000_000, "plain", args.wide))
            for d, mode, agents in cases:
                here = Path(tmp) / f"{mode}-{d}-{agents}"
                here.mkdir()
                case = run_case(args, broker.url, here, d, mode, agents)
                case["bus"] = bus
                results["cases"].append(case)
                print(json.dumps(case), file=sys.stderr, flush=True)
    by = {(c["bus"], c["d"], c["mode"], c["agents"]): c for c in results["cases"]}
    for bus in args.buses:
        plain = by.get((bus, 10_000_000, "plain", args.agents), {})
        secure = by.get((bus, 10_000_000, "secagg+", args.agents), {})
        if plain.get("seconds_per_round") and secure.get("seconds_per_round"):
            ratio = secure["seconds_per_round"] / plain["seconds_per_round"]
            results[f"{bus}_secagg_to_plain_round_at_10m"] = round(ratio, 3)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
