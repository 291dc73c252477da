"""One agent process: load the plugin, open the bus, play the configured role.

``run_node`` owns everything it starts (an ``AsyncExitStack`` for the bus, the role's
``TaskGroup`` for tasks); cancelling it (SIGTERM, Ctrl-C) unwinds all of them.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

import structlog

from agent.bus.base import Bus, BusSettings
from agent.bus.url import TlsFiles, bus_from_url
from agent.config import AgentConfig, RoleName
from agent.plugin.api import PluginContext
from agent.plugin.loader import load_plugin
from agent.roles.aggregator import Aggregator
from agent.roles.records import RoundObserver, RunSummary
from agent.roles.trainer import Trainer

log = structlog.get_logger(__name__)
T = TypeVar("T")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def bus_settings(config: AgentConfig, *, suffix: str = "") -> BusSettings:
    """Transport settings for ``config``'s agent (``suffix`` keeps the client id of a tool
    acting as the agent, e.g. ``fedbus listen``, from displacing the agent's own session)."""
    client_id = f"{config.federation}-{config.agent_id}" + (f"-{suffix}" if suffix else "")
    return BusSettings(client_id=client_id, max_payload=config.max_payload)


def open_bus(config: AgentConfig, settings: BusSettings) -> Bus:
    """The bus adapter for ``config.bus_url`` with its ``[tls]`` files (not yet entered)."""
    tls = TlsFiles(config.tls.ca_file, config.tls.cert_file, config.tls.key_file)
    return bus_from_url(config.bus_url, settings, tls=tls)


async def run_node(
    config: AgentConfig, *, observer: RoundObserver | None = None
) -> RunSummary | None:
    """Run the configured role until it ends (aggregator) or is cancelled (trainer).

    Returns the aggregator's ``RunSummary``; a trainer returns only by cancellation.

    Raises:
        PluginError, ConfigError, RoundError: as raised by the plugin, bus URL or rounds.
    """
    config.state_dir.mkdir(parents=True, exist_ok=True)
    context = PluginContext(config.agent_id, config.plugin.options, config.state_dir)
    plugin = await asyncio.to_thread(load_plugin, config.plugin.name, context)
    bus = open_bus(config, bus_settings(config))
    log.info("agent_starting", role=str(config.role), agent_id=config.agent_id,
             federation=config.federation, plugin=plugin.name)  # fmt: skip
    async with bus:
        if config.role is RoleName.TRAINER:
            await Trainer(config=config, bus=bus, plugin=plugin).run()
            return None
        weights = await asyncio.to_thread(plugin.get_weights)
        aggregator = Aggregator(
            config=config, bus=bus, plugin_name=plugin.name, initial_weights=weights,
            observer=observer,
        )  # fmt: skip
        return await aggregator.run()


def run_until_signal(coro: Coroutine[Any, Any, T]) -> T | None:
    """Run ``coro`` on a new event loop; SIGTERM and SIGINT cancel it cleanly.

    Returns the coroutine's result, or None when a signal stopped it.
    """

    async def main() -> T | None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        stopped: list[str] = []

        def stop(signame: str) -> None:
            stopped.append(signame)
            log.info("agent_stopping", signal=signame)
            task.cancel()

        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, stop, sig.name)
        try:
            return await coro
        except asyncio.CancelledError:
            if not stopped:
                raise
            return None
        finally:
            for sig, handler in previous.items():
                loop.remove_signal_handler(sig)
                signal.signal(sig, handler)

    return asyncio.run(main())
