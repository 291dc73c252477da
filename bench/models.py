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
  folded) per second while some update was in flight (the union of every update's interval
  from its manifest to its fold: no gap where none was sent, as a trainer that got the model
  late), against
  ``raw_throughput``: the same bytes in chunk-size payloads published by ``--agents``
  processes at once through the same bus adapter (same client library) to one subscriber
  that only counts them, measured just before and just after the case in this process;
  ``throughput_ratio`` = update / the mean of the two (the machine's load drifts), and
  ``transfer_ratio`` the same up to the last chunk kept (the transfer without the last fold);
- ``load_average``: the 1-minute load average at the case's start and end.

    .venv/bin/python bench/models.py [--sizes 1e6 1e7 5e7] [--buses nats mqtt]
        [--modes plain secagg+] [--agents 3] [--wide 10] [--rounds 2]

``--wide N`` adds a plain case with N agents at 10M (the aggregator's RSS whatever the cohort).
With ``FEDBUS_BENCH_PROFILE=DIR`` each child process writes its cProfile stats to DIR;
``FEDBUS_BENCH_LOGS=DIR`` keeps the children's logs there. A case that fails says why in its
JSON (``failed``: every child's exit status, negative for a signal as -9 for the OOM killer;
``why``: the error lines of their logs) and keeps its logs in ``logs`` (a directory outside
the run's temporary one). The children are in bench/models_cases.py.

Measured (2026-12-02, 10M, 3 agents, 2 rounds, 1 MB chunks, 2 shared cores at load 4-16:
the raw baseline itself swung 55-507 MB/s within a case, so every run is listed).
``thr``: throughput_ratio (update MB/s in brackets); ``s/p``: SecAgg+ / plain round.

- main's code (d43b233), three runs: NATS thr 0.338 (92), 0.508 (64), 0.621 (139), s/p
  1.381, 0.593, 1.287; MQTT thr 0.401 (129), 0.441 (113), 0.464 (78), s/p 1.193, 1.393,
  0.974;
- with the receive path pipelined, the per-sender window and one encryption per sealed
  chunk (ac4d09c), run interleaved with main's: NATS thr 0.629 (161), 0.738 (164), s/p
  1.176, 1.484; MQTT thr 0.874 (162), 0.566 (90; raw 98-221), s/p 1.818, 2.137 (raw 55-324);
- two earlier runs of the same changes at load 8-16 (one beside a test run): NATS thr 0.52
  (97), 0.396 (60), s/p 1.413, 1.090; MQTT thr 0.578 (76), 0.602 (76), s/p 5.25 (the test
  run), 0.945.
- after merging main (06a9479, 4fcee6b), two runs at load 4-7: NATS thr 0.484 (128; raw
  228-299), 0.318 (59; raw 287 then 83), s/p 0.881, 0.609; MQTT thr 0.403 (159; raw
  377-411), 0.419 (188; raw 431-466), s/p 1.366, 1.527.
- Plain updates now arrive at 128-188 MB/s where the machine allowed it (main: 64-139);
  the ≥ 0.8 target was met in one run of twelve (MQTT 0.874). On a quieter machine raw rises
  (to 377-507 MB/s) and ours does not: the upload is now bound by the CPU each MB costs on
  2 shared cores (the aggregator's SHA-256 1.1 ms, ChaCha20 0.7 ms and fold 0.9 ms per MB,
  the trainers' hashing and sealing), not by a serial hop or the window. The SecAgg+
  round's extra time is not in its transfer (its update span is 0.6-1.3 s, as plain's):
  it is before the first masked input arrives (the stages before it and the trainer's
  masking, 0.33 s of CPU per agent at 10M) and after (unmask, ``finish``); its fold after
  the last chunk is 31-147 ms.
  The aggregator's RSS stayed 239-286 MB (target 360) with the 32 MiB window.
- the final tree (aca5350, after every merge), one run at load 2-5: 10M NATS thr 0.685
  (173), n = 10 1.041 (177), s/p 1.135; MQTT thr 0.43 (156; raw 360-366), n = 10 0.981
  (179), s/p 1.265; aggregator RSS 247-266 MB (n = 10: 253, 264; target 360). 50M plain:
  NATS 8.23 s a round, thr 0.56 (162), aggregator 736 MB; MQTT 7.37 s, thr 0.525 (193),
  735 MB (target 1000).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog
from models_cases import MB, child_main, wait_for

from agent.brokers import EmbeddedBroker
from agent.bus.base import BusSettings
from agent.bus.url import bus_from_url
from agent.config import TransferConfig
from agent.messages.chunks import chunking_plan

#: Log lines that say why a child failed.
ERROR_LINE = re.compile(r"error|exception|traceback|failed|killed|refused|timed? ?out", re.I)


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


def why(logs: list[Path], lines: int = 6) -> dict[str, list[str]]:
    """The last error lines of each log that has any (what a failed case prints)."""
    out = {}
    for log in logs:
        text = log.read_text(errors="replace").splitlines() if log.exists() else []
        errors = [line[:300] for line in text if ERROR_LINE.search(line)]
        if errors:
            out[log.name] = errors[-lines:]
    return out


def run_case(
    args: argparse.Namespace, url: str, tmp: Path, d: int, mode: str, agents: int
) -> dict[str, Any]:
    case = argparse.Namespace(**{**vars(args), "d": d, "mode": mode, "agents": agents, "url": url})
    case.state = str(tmp / f"{mode}-{d}-{agents}")
    load = [round(os.getloadavg()[0], 2)]
    raw_before = asyncio.run(raw_throughput(case, url, tmp, 4 * d))
    trainers = [
        spawn(case, "trainer", tmp / f"t{i}.json", agent_id=f"agent-{i}", value=i + 1)
        for i in range(agents)
    ]
    started = time.perf_counter()
    agg = spawn(case, "aggregator", tmp / "agg.json")
    try:
        code: int | str = agg.wait(args.case_timeout)
    except subprocess.TimeoutExpired:
        agg.kill()
        code = f"timeout after {args.case_timeout} s"
        agg.wait(60)
    wall = time.perf_counter() - started
    early = {f"t{i}": p.poll() for i, p in enumerate(trainers)}  # None: still up, as it should
    for p in trainers:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in trainers:
        p.wait(60)
    if keep := os.environ.get("FEDBUS_BENCH_LOGS"):  # a directory: keep the children's logs
        for log in tmp.glob("*.log"):
            name = f"{url.split(':', maxsplit=1)[0]}-{mode}-{d}-{agents}-{log.name}"
            (Path(keep) / name).write_bytes(log.read_bytes())
    load.append(round(os.getloadavg()[0], 2))
    statuses = {"agg": code, **{k: v for k, v in early.items() if v is not None}}
    if code != 0:
        kept = Path(tempfile.mkdtemp(prefix=f"fedbus-models-{mode}-{d}-{agents}-"))
        for log in tmp.glob("*.log"):
            shutil.copy(log, kept / log.name)
        logs = sorted(tmp.glob("*.log"))
        return {"failed": statuses, "why": why(logs), "logs": str(kept), "load_average": load}
    result = json.loads((tmp / "agg.json").read_text())
    model_bytes = 4 * d
    agent_rss = [json.loads((tmp / f"t{i}.json").read_text())["peak_rss"] for i in range(agents)]
    update_bytes_each = result["update_bytes"] / max(1, result["updates"])
    raw_after = asyncio.run(raw_throughput(case, url, tmp, int(update_bytes_each)))
    raw = (raw_before + raw_after) / 2
    per_round_bytes = result["update_bytes"] / max(1, result["rounds"])
    throughput = (
        result["update_bytes"] / result["update_seconds"] if result["update_seconds"] else 0.0
    )
    transfer = result["update_bytes"] / max(result["transfer_seconds"], 1e-9)
    return {
        "d": d,
        "mode": mode,
        "agents": agents,
        "wall_seconds": round(wall, 2),
        "survivors": result["survivors"],
        "seconds_per_round": round(result["seconds_per_round"], 3),
        # round 1 also carries the initial model's delivery to every joiner
        "round_seconds": [round(x, 3) for x in result["round_seconds"]],
        "chunks_per_update": chunking_plan(int(update_bytes_each), args.chunk_size).chunks,
        "update_bytes_per_param": round(update_bytes_each / d, 4),
        "round_bytes_in": int(per_round_bytes),
        "aggregator_peak_rss": result["peak_rss"],
        "aggregator_rss_target": model_bytes * 4 + 200 * MB,
        "agent_peak_rss": max(agent_rss),
        "update_throughput": round(throughput),
        "raw_throughput": [round(raw_before), round(raw_after)],
        "throughput_ratio": round(throughput / raw, 3) if raw else None,
        "transfer_ratio": round(transfer / raw, 3) if raw and transfer else None,
        "load_average": load,
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
    # the JSON is the only thing on stdout: the broker's and the raw subscriber's logs go
    # to stderr
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
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
                case = {"bus": bus, **run_case(args, broker.url, here, d, mode, agents)}
                results["cases"].append(case)
                print(json.dumps(case), file=sys.stderr, flush=True)
    by = {(c["bus"], c.get("d"), c.get("mode"), c.get("agents")): c for c in results["cases"]}
    for bus in args.buses:
        plain = by.get((bus, 10_000_000, "plain", args.agents), {})
        secure = by.get((bus, 10_000_000, "secagg+", args.agents), {})
        if plain.get("seconds_per_round") and secure.get("seconds_per_round"):
            ratio = secure["seconds_per_round"] / plain["seconds_per_round"]
            results[f"{bus}_secagg_to_plain_round_at_10m"] = round(ratio, 3)
            later = sum(secure["round_seconds"][1:]), sum(plain["round_seconds"][1:])
            if all(later):  # rounds after the first: the steady state
                steady = round(later[0] / later[1], 3)
                results[f"{bus}_secagg_to_plain_later_rounds_at_10m"] = steady
    print(json.dumps(results, indent=2))
    if any("failed" in c for c in results["cases"]):
        sys.exit(1)  # a run that did not do its job never exits 0


if __name__ == "__main__":
    main()
