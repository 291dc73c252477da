"""One digits federation on a real broker for the fault scenarios (not a scenario module):
the aggregator in this process (its log lines captured), every trainer a separate
``fedbus run`` process (``agent.demo.processes``), plus any extra processes a scenario adds
(e.g. mallory's modified trainer). Every agent is enrolled with the run's CA: messages are
signed, updates and metrics sealed, so an attacker here is an authenticated member."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from agent.bus.base import BusSettings
from agent.bus.url import bus_from_url
from agent.config import (
    AgentConfig,
    AggregatorConfig,
    IdentityConfig,
    PluginConfig,
    TrainerConfig,
)
from agent.demo.processes import AgentProcess, start_agent, stop_agents
from agent.identity import ca, pem
from agent.plugin.api import PluginContext
from agent.plugin.loader import load_plugin
from agent.role import Role
from agent.roles.aggregator import Aggregator
from agent.roles.aggregator.records import RunSummary

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = "digits-mlp"


@dataclass
class Run:
    """What a federation left: the summary and the aggregator's log events."""

    summary: RunSummary
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final_accuracy(self) -> float | None:
        accuracies = [r.accuracy for r in self.summary.rounds if r.accuracy is not None]
        return accuracies[-1] if accuracies else None

    def where(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event]


#: The federation CA of each run directory (every agent of a run is enrolled with it).
_AUTHORITIES: dict[Path, ca.CertificateAuthority] = {}


def enrolled(where: Path, agent_id: str, role: Role) -> IdentityConfig:
    """``agent_id``'s certificate and key from the run's CA (``where/pki``, made on first use):
    every message it sends is signed, and updates and metrics are sealed to the aggregator."""
    pki = where / "pki"
    pki.mkdir(parents=True, exist_ok=True)
    authority = _AUTHORITIES.setdefault(where, ca.init_ca("fed"))
    key, cert = ca.issue(authority, agent_id, role=role)
    pem.write_private_key(pki / f"{agent_id}.key", key)
    pem.write_pem(pki / f"{agent_id}.pem", cert)
    pem.write_pem(pki / "ca.pem", authority.cert)
    return IdentityConfig(
        cert_file=pki / f"{agent_id}.pem", key_file=pki / f"{agent_id}.key", ca_file=pki / "ca.pem"
    )


def trainer_config(
    agent_id: str, index: int, shards: int, url: str, where: Path, *, secure: bool
) -> Path:
    """A trainer's TOML: digits shard ``index`` of ``shards`` (IID, seed 0), enrolled."""
    config = AgentConfig(
        identity=enrolled(where, agent_id, Role.TRAINER),
        role=Role.TRAINER,
        agent_id=agent_id,
        federation="fed",
        bus_url=url,
        state_dir=where / agent_id,
        plugin=PluginConfig(
            name=PLUGIN,
            options={"agent_index": index, "num_agents": shards, "partition": "iid"},
        ),
        trainer=TrainerConfig(join_retry=0.5, require_secure_aggregation=secure),
    )
    where.mkdir(parents=True, exist_ok=True)
    path = where / f"{agent_id}.toml"
    path.write_bytes(config.to_toml())
    return path


def start_module(agent_id: str, module: str, args: Sequence[str], log: Path) -> AgentProcess:
    """A process running ``python -m module args`` from the project root (its log at ``log``)."""
    import subprocess

    from agent.children import die_with_parent

    log.parent.mkdir(parents=True, exist_ok=True)
    out = log.open("wb")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=ROOT,
        start_new_session=True,
        preexec_fn=die_with_parent,  # noqa: PLW1509 - one prctl call
    )
    return AgentProcess(agent_id, process, log, out)


async def federate(
    url: str,
    where: Path,
    *,
    schedule: AggregatorConfig,
    honest: int,
    extra: Sequence[AgentProcess] = (),
    secure: bool = False,
) -> Run:
    """Run ``schedule`` with ``honest`` trainer processes (shards 0 … honest-1 of ``honest``)
    and the ``extra`` processes already started; every process is stopped afterwards."""
    os.makedirs(where, exist_ok=True)
    initial = load_plugin(
        PLUGIN, PluginContext("aggregator", {"agent_index": 0, "num_agents": 1})
    ).get_weights()
    config = AgentConfig(
        identity=enrolled(where, "aggregator", Role.AGGREGATOR),
        role=Role.AGGREGATOR,
        agent_id="aggregator",
        federation="fed",
        bus_url=url,
        state_dir=where / "aggregator",
        plugin=PluginConfig(name=PLUGIN),
        aggregator=schedule,
    )
    agents: list[AgentProcess] = list(extra)
    try:
        for i in range(honest):
            agent_id = f"agent-{i}"
            path = trainer_config(agent_id, i, honest, url, where, secure=secure)
            agents.append(start_agent(agent_id, path, where / "logs" / f"{agent_id}.log"))
        with capture_logs(processors=[merge_contextvars]) as events:
            async with bus_from_url(url, BusSettings(client_id="aggregator")) as bus:
                summary = await Aggregator(
                    config=config, bus=bus, plugin_name=PLUGIN, initial_weights=initial
                ).run()
    finally:
        stop_agents(agents)
    return Run(summary, list(events))
