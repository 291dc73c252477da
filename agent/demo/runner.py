"""The demo federation: embedded broker, N agents in fleet processes (``agent.fleet``: many
trainers per process, one process per CPU), an in-process aggregator.

Everything started here is stopped when ``run_demo`` returns or raises (Ctrl-C included):
the fleet processes get SIGTERM (SIGKILL after a grace period), then the broker is stopped.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

import structlog

from agent.brokers import BrokerKind, EmbeddedBroker
from agent.bus.base import BusSettings
from agent.bus.url import bus_from_url
from agent.config import AgentConfig, TrainingMode
from agent.demo import fleet
from agent.demo.configs import (
    FEDERATION,
    aggregator_config,
    enrolled_config,
    partition_label,
    plugin_options,
    trainer_config,
    write_config,
)
from agent.demo.options import DemoOptions
from agent.demo.p2p import P2PResult, run_p2p
from agent.demo.pki import AGGREGATOR_ID, DemoPki, create_pki, enroll_agents, lock_down, tls_files
from agent.demo.reference import Reference
from agent.demo.report import write_report
from agent.errors import BusTimeoutError, FedbusError, RoundError, TransportError
from agent.fleet.members import raise_open_files
from agent.fleet.processes import FleetProcess, default_processes, start_fleets, stop_fleets
from agent.lockdown import embedded_broker
from agent.logs import configure_logging, open_log_file, private_dir
from agent.node import run_node, run_until_signal
from agent.plugin.api import PluginContext
from agent.plugin.loader import describe_plugin, load_plugin
from agent.roles.aggregator.records import RoundRecord, RunSummary
from agent.runtime.tasks import task_group
from agent.state import read_weights

log = structlog.get_logger(__name__)

INSECURE_WARNING = (
    "WARNING: --insecure: no CA, no enrollment, no TLS, no broker ACLs, no signatures, no "
    "sealing.\n         Anyone who reaches the broker can join, forge updates and read "
    "them. For debugging only."
)


@dataclass(frozen=True, slots=True)
class DemoResult:
    summary: RunSummary
    centralized_accuracy: float | None
    wall_seconds: float
    report_files: list[Path]
    #: ``--mode p2p``: the peers' timeline (``summary`` then has no rounds)
    p2p: P2PResult | None = None


def export_final_model(options: DemoOptions) -> Path | None:
    """The plugin's ``export`` hook on the run's final global model (the aggregator's
    ``global_model.npz``), written as ``model.<format>`` in the report directory; None when
    the plugin has no export hook."""
    plugin = load_plugin(
        options.plugin,
        PluginContext("export", plugin_options(options, 0, options.agents, options.partition)),
    )
    weights = read_weights(options.report_dir / "aggregator" / "global_model.npz")
    return plugin.export(weights, options.report_dir / "model")


class Progress:
    """Prints one line per round, and kills agents at the start of round 2 if asked."""

    #: the table's header (``privacy``: with an ε column)
    HEADER = "round  accuracy    loss  seconds  survivors"

    def __init__(self, out: TextIO, agents: list[FleetProcess], kill: int) -> None:
        self._out = out
        self._agents = agents
        self._kill = kill

    def round_started(self, round: int, cohort: Sequence[str]) -> None:
        if round == 2 and self._kill:
            members = set(cohort)
            victims = [a for a in self._agents if members.intersection(a.agent_ids)]
            victims = victims[: self._kill]
            for a in victims:
                a.kill()
            killed = ", ".join(", ".join(a.agent_ids) for a in victims)
            self._print(f"  (killed {killed} mid-round)")

    def round_finished(self, record: RoundRecord) -> None:
        acc = "      -" if record.accuracy is None else f"{100 * record.accuracy:6.2f}%"
        loss = "     -" if record.loss is None else f"{record.loss:6.4f}"
        survivors = f"{len(record.survivors)}/{len(record.cohort)}"
        eps = "" if record.epsilon is None else f"  {record.epsilon:7.3f}"
        self._print(f"{record.round:5d}  {acc}  {loss}  {record.seconds:7.2f}  {survivors:>9}{eps}")

    def _print(self, line: str) -> None:
        print(line, file=self._out, flush=True)


def run_demo(options: DemoOptions, *, out: TextIO = sys.stdout) -> DemoResult | None:
    """Run the demo; returns None when interrupted (Ctrl-C / SIGTERM).

    Raises:
        ConfigError: a ``--mode`` this install lacks, or a fleet larger than ``--agents``.
    """
    fleet.check_mode(options)
    raise_open_files()  # the broker and the fleet processes inherit it
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run_demo(options, out)
    except KeyboardInterrupt:
        print("interrupted: stopped agents and broker", file=out, flush=True)
        return None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM outside the event loop: unwind like Ctrl-C, so every ``finally`` runs."""
    raise KeyboardInterrupt


#: Under the report dir: the agents' configs, keys and state while the demo runs.
WORK_DIR = "agents"


def _work_dir(report_dir: Path, stack: ExitStack) -> Path:
    """``REPORT/agents``, 0700, emptied first (a SIGKILLed demo leaves its agents' private
    keys there; this run removes them) and removed when the demo ends; the last run's
    ``REPORT/aggregator`` state is removed too."""
    work = report_dir / WORK_DIR
    shutil.rmtree(work, ignore_errors=True)
    # Every run is a new federation (a new CA): the last run's aggregator state, its
    # ledger signed under the old CA, would make every agent refuse every model.
    shutil.rmtree(report_dir / "aggregator", ignore_errors=True)
    stack.callback(shutil.rmtree, work, ignore_errors=True)
    return private_dir(work)


def _run_demo(options: DemoOptions, out: TextIO) -> DemoResult | None:
    report_dir = private_dir(options.report_dir)  # logs, keys, models: ours only
    private_dir(report_dir / "logs")
    started = time.perf_counter()
    with ExitStack() as stack:
        work = _work_dir(report_dir, stack)
        log_file = stack.enter_context(open_log_file(report_dir / "logs" / "aggregator.log"))
        configure_logging(level="info", fmt="json", stream=log_file)
        agent_ids = [f"agent-{i:02d}" for i in range(options.agents)]
        pki = None if options.insecure else create_pki(report_dir / "pki", FEDERATION)
        url = options.bus_url
        if url is None:
            kind: BrokerKind = "mqtt" if options.bus == "mqtt" else "nats"
            broker = (
                EmbeddedBroker(kind)
                if pki is None
                else embedded_broker(lock_down(pki, kind, agent_ids))
            )
            url = stack.enter_context(broker).url
        else:
            asyncio.run(_probe(url))
        info = describe_plugin(options.plugin).info  # fails fast on a missing plugin
        print(
            f"fedbus demo: plugin {options.plugin}, {options.agents} agents, "
            f"{options.rounds} rounds, {partition_label(options, info)}, bus {url}, "
            f"secure aggregation {options.secure_aggregation}{fleet.describe(options)}",
            file=out,
            flush=True,
        )
        if pki is None:
            print(INSECURE_WARNING, file=out, flush=True)
            configs = {
                a: write_config(
                    work / f"{a}.toml",
                    fleet.shape_agent(options, i, trainer_config(options, i, url, work)),
                )
                for i, a in enumerate(agent_ids)
            }
        else:
            print(
                f"identities: CA {pki.ca.fingerprint[:16]}… in {pki.directory}; enrolling "
                f"{len(agent_ids)} agents over the bus; watch the bus with "
                f"`fedbus listen --as {report_dir / 'aggregator.toml'}`",
                file=out,
                flush=True,
            )
            enrolled = asyncio.run(
                enroll_agents(
                    pki,
                    url=url,
                    federation=FEDERATION,
                    work=work,
                    plugin=options.plugin,
                    options={
                        a: plugin_options(options, i, options.agents, options.partition)
                        for i, a in enumerate(agent_ids)
                    },
                )
            )
            configs = {
                a: write_config(
                    path,
                    fleet.shape_agent(options, agent_ids.index(a), enrolled_config(options, path)),
                )
                for a, path in enrolled.items()
            }
        aggregator = aggregator_config(options, url, pki)
        # The aggregator's config, for `fedbus listen/publish --as` while the demo runs.
        write_config(report_dir / "aggregator.toml", aggregator)
        agents: list[FleetProcess] = []
        stack.callback(stop_fleets, agents)
        # Trained beside the federation, at the lowest priority: round 1 starts at once.
        centralized = stack.enter_context(Reference(options))
        agents += start_fleets(
            list(configs.items()),
            report_dir / "logs",
            # --kill-agents SIGKILLs single agents: then each agent is a fleet of one
            processes=len(configs) if options.kill_agents else default_processes(),
            ramp=options.agents / 100,  # TLS handshakes spread: nats-server allows each 2 s
        )
        if options.mode == TrainingMode.P2P:  # no aggregator: watch the peers' statuses
            return _p2p(options, url, configs, out, pki, started=started, centralized=centralized)
        print(Progress.HEADER + ("  epsilon" if options.dp != "off" else ""), file=out, flush=True)
        progress = Progress(out, agents, options.kill_agents)
        summary = run_until_signal(_federate(aggregator, agents, progress))
        if summary is None:
            raise KeyboardInterrupt
        reference = centralized.result()
        if reference is not None:
            print(
                f"centralized reference (same model, all training data): {100 * reference:.2f}%",
                file=out,
                flush=True,
            )
        exported = export_final_model(options)
        if exported is not None:
            print(f"final model exported: {exported}", file=out, flush=True)
        wall = time.perf_counter() - started
        files = write_report(
            report_dir,
            records=summary.rounds,
            final_accuracy=summary.final_accuracy,
            centralized_accuracy=reference,
            wall_seconds=wall,
            settings={**asdict(options), "report_dir": str(report_dir), "bus_url": url},
            stopped=summary.stopped,
        )
        final = summary.final_accuracy
        final_text = "n/a" if final is None else f"{100 * final:.2f}%"
        ref_text = "" if reference is None else f" (centralized {100 * reference:.2f}%)"
        print(
            f"final accuracy {final_text}{ref_text} in {wall:.1f} s; report: {report_dir}/",
            file=out,
            flush=True,
        )
        _say_stopped(out, options, summary)
        return DemoResult(summary, reference, wall, files)


def _p2p(
    options: DemoOptions,
    url: str,
    configs: dict[str, Path],
    out: TextIO,
    pki: DemoPki | None,
    *,
    started: float,
    centralized: Reference,
) -> DemoResult:
    """``--mode p2p``: watch the peers to the end; no rounds, ``p2p`` the peers' timeline
    and their mean model's accuracy."""
    tls = None if pki is None else tls_files(pki, AGGREGATOR_ID, url)
    steps = fleet.p2p_config(options, list(configs)).total_steps
    peers = run_p2p(url, configs, steps, out, report_dir=options.report_dir, tls=tls)
    wall = time.perf_counter() - started
    reference = centralized.result()
    summary = RunSummary(rounds=[], final_version=options.rounds, final_sha256="")
    return DemoResult(summary, reference, wall, [options.report_dir / "p2p.json"], p2p=peers)


def _say_stopped(out: TextIO, options: DemoOptions, summary: RunSummary) -> None:
    """A run that ended early by design (the privacy budget) says so, with what it spent."""
    if summary.stopped is None:
        return
    last = summary.rounds[-1] if summary.rounds else None
    spent = f"ε = {last.epsilon:.3f}" if last and last.epsilon is not None else "nothing"
    print(
        f"stopped by design after {len(summary.rounds)} of {options.rounds} rounds: "
        f"{summary.stopped} (spent {spent}, target ε = {options.epsilon})",
        file=out,
        flush=True,
    )


async def _federate(
    config: AgentConfig, agents: list[FleetProcess], progress: Progress
) -> RunSummary:
    async with task_group() as tg:
        watcher = tg.create_task(_watch(agents), name="demo-watch-agents")
        try:
            summary = await run_node(config, observer=progress)
        finally:
            watcher.cancel()
    if summary is None:
        raise RoundError("the aggregator returned no summary")
    return summary


async def _probe(url: str) -> None:
    """Fail fast, before starting agents, when the broker at ``url`` cannot be reached."""
    timeout = 10.0
    async with bus_from_url(url, BusSettings(client_id="fedbus-demo-probe")) as bus:
        try:
            await bus.wait_connected(timeout=timeout)
        except BusTimeoutError:
            raise TransportError(f"cannot reach the broker at {url} within {timeout} s") from None


async def _watch(agents: list[FleetProcess]) -> None:
    """Fail fast when every agent process died on its own (e.g. a broken install)."""
    reported: set[str] = set()
    while True:
        await asyncio.sleep(0.5)
        for a in agents:
            code = a.process.poll()
            if code is not None and not a.killed_on_purpose and a.name not in reported:
                reported.add(a.name)
                log.error("agent_exited", agent=a.name, code=code, log=str(a.log_path))
        if agents and all(a.process.poll() is not None for a in agents):
            where = agents[0].log_path
            raise FedbusError(
                f"all agent processes exited; see {where and where.parent}/fleet-*.log"
            )
