"""Many trainers in one asyncio process: the members of one fleet process.

Each member is a whole device as ``fedbus run`` plays it: ``agent.node_trainer.run_trainer``
over its own ``AgentConfig`` (its own bus connection and client id, its identity files, its plugin
instance and state directory). They share the event loop, the default thread pool (plugin
``fit``/``evaluate``, encoding and sealing run there) and whatever the plugin shares between
its instances (e.g. read-only data loaded once per process). One member failing (a plugin
error, a revoked certificate) is logged and recorded; the others go on.
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from agent.bus.admission import DEFAULT_CONCURRENT_CONNECTS, ConnectGate, use_gate
from agent.config import AgentConfig
from agent.errors import ConfigError, FedbusError
from agent.node_trainer import run_trainer
from agent.role import Role

log = structlog.get_logger(__name__)


def config_files(paths: Sequence[Path]) -> list[Path]:
    """``paths`` with each directory replaced by its ``*.toml`` files, sorted by name.

    Raises:
        ConfigError: no config file at all.
    """
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.glob("*.toml")) if path.is_dir() else [path])
    if not files:
        raise ConfigError("no agent config (*.toml) given")
    return files


def load_configs(files: Sequence[Path]) -> list[AgentConfig]:
    """The trainer configs in ``files`` (see ``config_files``).

    Raises:
        ConfigError: a config that does not load, a role other than trainer, or two
            configs with the same agent id.
    """
    configs = [AgentConfig.load(f) for f in files]
    seen: set[str] = set()
    for file, config in zip(files, configs, strict=True):
        if config.role is not Role.TRAINER:
            raise ConfigError(f"{file}: a fleet runs trainers, not role = {config.role!s}")
        if config.agent_id in seen:
            raise ConfigError(f"{file}: agent_id {config.agent_id!r} appears twice")
        seen.add(config.agent_id)
    return configs


def raise_open_files() -> int:
    """Raise this process's soft limit on open files to its hard limit (every member holds
    a connection or two); returns the new soft limit. Children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


@dataclass
class Fleet:
    """The trainers of one fleet process.

    Attributes:
        configs: one trainer config per member.
        ramp: seconds over which the members start, evenly spread (0: all at once), so a
            large fleet does not open every TLS connection in the same instant.
        threads: worker threads of the event loop's default executor.
        connects: broker connects in flight at once in this process (``ConnectGate``).
        failed: agent id → why that member stopped (filled while ``run`` runs; read it
            after ``run`` returned or was cancelled).
    """

    configs: Sequence[AgentConfig]
    ramp: float = 0.0
    threads: int = 16
    connects: int = DEFAULT_CONCURRENT_CONNECTS
    failed: dict[str, str] = field(default_factory=dict)

    async def run(self) -> None:
        """Run every member until cancelled; returns early only when every member stopped."""
        step = self.ramp / len(self.configs) if self.configs else 0.0
        log.info("fleet_starting", members=len(self.configs), ramp=self.ramp)
        # Each member hands its plugin calls, codec work and fsynced writes to the loop's
        # default executor; its usual min(32, cpus + 4) threads would make one member's
        # SecAgg+ stage wait behind every other member's writes.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(self.threads, thread_name_prefix="fleet")
        )
        # The members' connects go through one gate (agent.bus.admission): a bounded number
        # of TLS handshakes at a time, each within the broker's handshake timeout.
        with use_gate(ConnectGate(self.connects)):
            async with asyncio.TaskGroup() as tg:
                for i, config in enumerate(self.configs):
                    tg.create_task(self._member(config, delay=i * step), name=config.agent_id)

    async def _member(self, config: AgentConfig, *, delay: float) -> None:
        structlog.contextvars.bind_contextvars(agent_id=config.agent_id)  # this task's own
        await asyncio.sleep(delay)
        try:
            await run_trainer(config)
        except FedbusError as exc:  # one device's end, not the fleet's
            self.failed[config.agent_id] = f"{type(exc).__name__}: {exc}"
            log.warning("fleet_member_failed", error=type(exc).__name__, detail=str(exc))
        except Exception as exc:  # a bug in one member must not stop 999 others
            self.failed[config.agent_id] = f"{type(exc).__name__}: {exc}"
            log.exception("fleet_member_crashed", error=type(exc).__name__)
        else:
            self.failed[config.agent_id] = "stopped"
            log.error("fleet_member_stopped")
