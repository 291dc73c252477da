"""Benchmark: what one trainer costs its device, measured on real ``fedbus run`` processes.

Prints JSON with:

- ``import``: the trainer's own imports, from a real ``fedbus run`` of a trainer started with
  ``PYTHONPROFILEIMPORTTIME=1`` (``python -X importtime``): the sum of the top-level imports'
  cumulative µs, how many modules, and whether the aggregator role, the Prometheus client,
  scikit-learn or SciPy were among them.
- ``ready_seconds``: from spawning ``fedbus run --config trainer.toml`` to its ``READY=1``
  (sd_notify(3), read from a ``$NOTIFY_SOCKET`` datagram socket the benchmark binds, exactly
  what systemd's ``Type=notify`` waits for: the broker session is up with the trainer's
  subscriptions acknowledged, the plugin already loaded), for the minimal plugin and for
  ``digits-mlp``, whose first start (``cold``: empty state dir) builds its shard cache and
  whose later starts (``warm``, ``--starts`` of them) read it: the wall seconds (minimum and
  median) and the process's CPU seconds (all threads, from ``/proc/PID/task/*/schedstat``,
  ns) to READY (minimum and median). On a loaded machine the wall time is mostly waiting for
  a core; the minimum of several starts, and the CPU seconds, are the figures to compare.
- ``idle``: a trainer with a minimal numpy plugin (three arrays, written by this script as a
  plugin distribution on ``PYTHONPATH``), admitted by a real aggregator that waits for a
  second agent (so no round starts), then left alone for ``--idle`` s: its RSS (VmRSS), peak
  RSS (VmHWM) and PSS (smaps_rollup) at the end, its CPU use over the window (schedstat, all
  threads, as % of one core) and its wake-ups (context switches of all threads) per second,
  by thread name. The same for ``digits-mlp`` (memory only, its shard read from the cache
  its starts wrote, connected but not admitted).
- ``targets``: each figure over its target (≤ 1 meets it) and the load average when measured.
- ``reference``: the CPU seconds of ``python -c "import numpy"`` here (minimum of 3 before the
  run and 3 after, with ``fedbus``'s BLAS setting, ``agent.runtime.blas``), a yardstick for how
  slow this machine is at the moment, and the READY CPU in units of it: a loaded or slow
  machine inflates both alike, so ``ready_cpu_in_numpy_imports`` compares across runs.
- ``bytecode``: fedbus and the plugins are byte-compiled before the starts, as ``pip install``
  does for a wheel (``byte_compile``).

Targets (issue 15): idle minimal trainer ≤ 60 MB RSS and ≤ 0.1 % CPU; ``fedbus run`` to READY
≤ 0.3 s with digits-mlp.

Measured 2026-12-02 (NATS, ``--idle 20 --starts 3``, this shared 2-core machine at load average
3-12; digits-mlp warm, CPU seconds to READY, minimum / median of 3):

- before (``d43b233``), as this benchmark then ran (sources compiled at every start, this
  environment setting ``PYTHONDONTWRITEBYTECODE=1``): 0.694 / 0.776 (wall 0.738 min), 548
  modules; byte-compiled: 0.385 / 0.431 and 0.395 / 0.400;
- after (lazy X.509, body decoders and strategies; OpenBLAS workers quieted): 0.340 / 0.403,
  0.373 / 0.379, 0.490 / 0.490, 0.381 / 0.400 (wall min 0.53 to 1.75), 524 modules; with
  the yardstick as now defined: 0.300 / 0.310 and 0.321 / 0.323 (wall min 0.83 and 0.76,
  load 7-10), numpy 0.097 and 0.088 s, so ``ready_cpu_in_numpy_imports`` 3.09 and 3.65 (with
  OpenBLAS's default poll the yardstick was 0.12-0.22 s: 2.09-3.23, before and after alike);
- the same starts interleaved (one broker, before's and after's processes alternating,
  digits-mlp warm, CPU min / median): byte-compiled 0.382 / 0.435 → 0.288 / 0.330 (6 each,
  load 3) and 0.365 / 0.410 → 0.307 / 0.338 (10 each, load 12; with OpenBLAS's default poll
  0.336 / 0.385); sources compiled at every start 0.418 / 0.496 → 0.348 / 0.399 (8 each);
- idle minimal trainer: 54.3-54.4 MB RSS (55.5-55.7 before), 0.017-0.020 % CPU, 0.4 wake-ups
  per second; digits-mlp idle 57.9-58.0 MB (59.1-59.2).

    .venv/bin/python bench/agent_footprint.py [--bus mqtt|nats] [--idle 30] [--starts 3]
        [--status-every 5] [--without rich]
"""

from __future__ import annotations

import argparse
import compileall
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from footprint_process import Agent, write_minimal_plugin  # bench/, beside this script

from agent.brokers import EmbeddedBroker
from agent.config import AgentConfig, AggregatorConfig, LoggingConfig, PluginConfig
from agent.logs import configure_logging
from agent.role import Role
from agent.runtime.blas import quiet_blas_threads

FEDERATION = "footprint"
#: issue 15's targets
TARGET_RSS_MB, TARGET_IDLE_CPU_PERCENT, TARGET_READY_SECONDS = 60.0, 0.1, 0.3
WATCHED = ("agent.roles.aggregator", "prometheus_client", "sklearn", "scipy")

#: digits-mlp's shard: agent 0 of the demo's 10.
DIGITS_OPTIONS = {"agent_index": 0, "num_agents": 10}


def config(role: Role, agent_id: str, url: str, state: Path, plugin: str, **kw: Any) -> AgentConfig:
    if plugin == "digits-mlp":
        kw.setdefault("options", DIGITS_OPTIONS)
    return AgentConfig(
        role=role,
        agent_id=agent_id,
        federation=kw.pop("federation", FEDERATION),
        bus_url=url,
        state_dir=state,
        plugin=PluginConfig(name=plugin, options=kw.pop("options", {})),
        logging=LoggingConfig(level="info", format="json"),
        **kw,
    )


def imports(stderr: str) -> dict[str, Any]:
    """The ``-X importtime`` report: top-level cumulative µs summed, modules, watched ones."""
    rows = [line.split("|") for line in stderr.splitlines() if line.startswith("import time:")]
    rows = [r for r in rows if r[1].strip().isdigit()]
    names = {r[2].strip() for r in rows}
    top = sum(int(r[1]) for r in rows if not r[2].startswith("  "))
    return {
        "seconds": round(top / 1e6, 3),
        "modules": len(names),
        **{f"imports_{m}": any(n == m or n.startswith(m + ".") for n in names) for m in WATCHED},
    }


def byte_compile(*roots: Path) -> list[str]:
    """Byte-compile fedbus, digits-mlp and the minimal plugin, as ``pip install`` does for a
    wheel: this editable install under ``PYTHONDONTWRITEBYTECODE=1`` would otherwise compile
    fedbus's 110 modules from source at every start (about 0.1 s of CPU). The directories."""
    digits = importlib.util.find_spec("fedbus_digits")
    if digits is None or digits.origin is None:
        raise SystemExit("digits-mlp (plugins/fedbus-digits) is not installed")
    dirs = [Path(__file__).resolve().parents[1] / "agent", Path(digits.origin).parent, *roots]
    for path in dirs:
        compileall.compile_dir(path, quiet=1)
    return [str(d) for d in dirs]


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    env = dict(os.environ)
    plugins = write_minimal_plugin(tmp / "plugins")
    byte_compile(plugins)
    if args.without:  # as on a device where these are not installed
        (plugins / "sitecustomize.py").write_text(
            "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in args.without),
            encoding="utf-8",
        )
    env["PYTHONPATH"] = os.pathsep.join([str(plugins), env.get("PYTHONPATH", "")])
    out: dict[str, Any] = {
        "bus": args.bus,
        "idle_window_seconds": args.idle,
        "aggregator_status_every": args.status_every,
        "hidden_modules": args.without,
        "bytecode": "compiled before the starts (as pip install does)",
    }
    with EmbeddedBroker(args.bus) as broker:
        agg = config(
            Role.AGGREGATOR,
            "aggregator",
            broker.url,
            tmp / "aggregator",
            "minimal",
            aggregator=AggregatorConfig(
                rounds=1,
                min_fit_clients=2,
                min_available_clients=2,
                join_timeout=3600.0,
                status_every=args.status_every,
            ),
        )
        (tmp / "aggregator.toml").write_bytes(agg.to_toml())
        aggregator = Agent(tmp / "aggregator.toml", tmp / "aggregator.log", env)
        agents = [aggregator]
        try:
            aggregator.wait_for("READY=1")
            # The trainer's imports, from one real start.
            t = config(Role.TRAINER, "imports", broker.url, tmp / "imports", "minimal")
            (tmp / "imports.toml").write_bytes(t.to_toml())
            profiled = Agent(
                tmp / "imports.toml", tmp / "imports.log", {**env, "PYTHONPROFILEIMPORTTIME": "1"}
            )
            profiled.wait_for("READY=1")
            profiled.stop()
            out["import"] = imports((tmp / "imports.log").read_text(errors="replace"))
            out["idle"] = {"minimal": idle(broker.url, tmp, env, "minimal", args.idle, agents)}
            out["ready_seconds"] = starts(broker.url, tmp, env, args.starts)
            # digits-mlp's memory: connected, in a federation with no aggregator (its model
            # would not fit the minimal aggregator's).
            out["idle"]["digits-mlp"] = idle(broker.url, tmp, env, "digits-mlp", 0, agents)
        finally:
            for a in agents:
                a.stop()
    return out


def idle(
    url: str, tmp: Path, env: dict[str, str], plugin: str, seconds: float, agents: list[Agent]
) -> dict[str, Any]:
    """A trainer admitted by the aggregator, then ``seconds`` of nothing."""
    name = f"idle-{plugin}"
    admitted = plugin == "minimal"
    fed = FEDERATION if admitted else "starts"
    # digits-mlp: the state dir its starts left, so its shard comes from the cache.
    state = tmp / (name if admitted else f"start-{plugin}")
    t = config(Role.TRAINER, name, url, state, plugin, federation=fed)
    (tmp / f"{name}.toml").write_bytes(t.to_toml())
    agent = Agent(tmp / f"{name}.toml", tmp / f"{name}.log", env)
    agents.append(agent)
    ready = agent.wait_for("READY=1")
    if admitted:
        agent.wait_for("STATUS=idle")  # admitted, holding the initial model
    time.sleep(2.0)  # let the join's replies settle
    result: dict[str, Any] = {"ready_seconds": round(ready, 3)}
    if seconds:
        cpu0, woke0, t0 = agent.cpu_seconds(), agent.wakeups(), time.perf_counter()
        time.sleep(seconds)
        cpu, wall = agent.cpu_seconds() - cpu0, time.perf_counter() - t0
        woke = agent.wakeups()
        result["cpu_percent"] = round(100 * cpu / wall, 4)
        result["cpu_seconds"] = round(cpu, 4)
        result["wakeups_per_second"] = {
            name: round((n - woke0.get(name, 0)) / wall, 2) for name, n in sorted(woke.items())
        }
    result.update(agent.memory())
    agent.stop()
    agents.remove(agent)
    return result


def starts(url: str, tmp: Path, env: dict[str, str], count: int) -> dict[str, Any]:
    """``fedbus run`` → READY=1 for each plugin: the minimal one, digits-mlp cold and warm."""
    out: dict[str, Any] = {}
    for plugin, label, fresh in [
        ("minimal", "minimal", False),
        ("digits-mlp", "digits_mlp_cold", True),
        ("digits-mlp", "digits_mlp_warm", False),
    ]:
        walls: list[float] = []
        cpus: list[float] = []
        state = tmp / f"start-{plugin}"
        for i in range(1 if fresh else count):
            if fresh:
                shutil.rmtree(state, ignore_errors=True)
            # Another federation: no aggregator answers, the trainer only connects.
            t = config(Role.TRAINER, f"start-{i}", url, state, plugin, federation="starts")
            path = tmp / f"start-{label}-{i}.toml"
            path.write_bytes(t.to_toml())
            agent = Agent(path, path.with_suffix(".log"), env)
            try:
                walls.append(agent.wait_for("READY=1"))
                cpus.append(agent.cpu_seconds())
            finally:
                agent.stop()
        out[label] = {
            "wall_min": round(min(walls), 3),
            "wall_median": round(statistics.median(walls), 3),
            "cpu_min": round(min(cpus), 3),
            "cpu_median": round(statistics.median(cpus), 3),
        }
    return out


def numpy_import_cpu(count: int = 3) -> list[float]:
    """CPU seconds of ``count`` fresh interpreters importing numpy, with the BLAS setting a
    ``fedbus`` process has (``agent.runtime.blas``: without it OpenBLAS's idle workers poll
    for a fixed wall time, so the figure swung with the load by up to 0.1 s)."""
    code = "import time, numpy; print(time.process_time())"
    env = dict(os.environ)
    quiet_blas_threads(env)
    return [
        float(
            subprocess.run(
                [sys.executable, "-c", code], capture_output=True, check=True, env=env
            ).stdout
        )
        for _ in range(count)
    ]


def targets(results: dict[str, Any]) -> dict[str, float]:
    """Each figure over its issue-15 target: ≤ 1 meets it."""
    idle, warm = results["idle"]["minimal"], results["ready_seconds"]["digits_mlp_warm"]
    return {
        "idle_rss_over_60_mb": round(idle["rss_mb"] / TARGET_RSS_MB, 3),
        "idle_cpu_over_0_1_percent": round(idle["cpu_percent"] / TARGET_IDLE_CPU_PERCENT, 3),
        "digits_ready_wall_min_over_0_3_s": round(warm["wall_min"] / TARGET_READY_SECONDS, 3),
        "digits_ready_cpu_min_over_0_3_s": round(warm["cpu_min"] / TARGET_READY_SECONDS, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bus", choices=["mqtt", "nats"], default="mqtt")
    parser.add_argument("--idle", type=float, default=30.0, help="idle window, s")
    parser.add_argument("--starts", type=int, default=5, help="warm starts per plugin")
    parser.add_argument(
        "--status-every",
        type=float,
        default=5.0,
        help="the aggregator's federation_status re-send interval, s (the default: 5)",
    )
    parser.add_argument(
        "--without",
        nargs="*",
        default=[],
        help="modules the agents must not find, as on a device that lacks them (e.g. rich: "
        "structlog imports it when installed; fedbus does not depend on it)",
    )
    args = parser.parse_args()
    configure_logging(stream=sys.stderr)  # the broker's lines; stdout is the JSON alone
    load_before = os.getloadavg()
    numpy_runs = numpy_import_cpu()
    with tempfile.TemporaryDirectory(prefix="fedbus-footprint-") as tmp:
        results = run(args, Path(tmp))
    results["targets"] = targets(results)
    numpy_cpu = round(min(numpy_runs + numpy_import_cpu()), 3)  # 3 before the run, 3 after
    warm = results["ready_seconds"]["digits_mlp_warm"]["cpu_min"]
    results["reference"] = {
        "cpu_import_numpy": numpy_cpu,
        "ready_cpu_in_numpy_imports": round(warm / numpy_cpu, 2),
    }
    results["load_average"] = {
        "before_1_5_15min": [round(x, 2) for x in load_before],
        "after_1_5_15min": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
