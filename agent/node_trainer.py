"""A trainer process, the composition root of a device: load the plugin, open the bus,
build the ``Trainer`` (a P2P ``Peer`` under ``[aggregator] mode = "p2p"``) and play it under
systemd's notifications until it is cancelled; ``[simulate]`` makes it slow or
intermittent (``plugin.slowed``, ``runtime.duty``).

Kept apart from ``agent.node`` (the aggregator's) so a device imports only what a trainer
needs: no aggregator role, no Prometheus client unless ``[metrics] port`` is set (a
lint-imports contract in ``pyproject.toml`` and ``tests/test_light_agent.py`` hold it).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING

import structlog

from agent.config import AgentConfig, TrainingMode
from agent.node_base import bus_settings, node_metrics, open_bus, tls_context
from agent.plugin.api import PluginContext
from agent.plugin.loader import CheckedPlugin, load_plugin
from agent.plugin.slowed import slowed
from agent.roles.liveness import status_will
from agent.roles.trainer import Trainer
from agent.runtime.duty import duty_cycled
from agent.runtime.metrics import Metrics
from agent.runtime.sdnotify import serve_role

if TYPE_CHECKING:
    from agent.roles.peer import Peer

log = structlog.get_logger(__name__)


async def run_trainer(config: AgentConfig) -> None:
    """Run ``config``'s trainer until it is cancelled (SIGTERM) or stopped for good.

    Raises:
        PluginError, ConfigError, TransportError: as raised by the plugin or the bus;
        AgentRevokedError: the aggregator says this agent's certificate is revoked.
    """
    config.state_dir.mkdir(parents=True, exist_ok=True)
    metrics = node_metrics(config)
    context = PluginContext(config.agent_id, config.plugin.options, config.state_dir)
    plugin = await asyncio.to_thread(load_plugin, config.plugin.name, context)
    tls = tls_context(config)  # the trainer reloads a renewed certificate into it
    log.info(
        "agent_starting",
        role=str(config.role),
        agent_id=config.agent_id,
        federation=config.federation,
        plugin=plugin.name,
    )
    plugin = slowed(plugin, config.simulate.slowdown, config.simulate.fit_seconds)
    # a duty-cycled agent's roles come and go: each gets its own series (a role registers
    # its gauges once per registry; the served registry shows the first life only)
    cycled = config.simulate.duty_cycle < 1
    await duty_cycled(
        lambda: _serve(config, plugin, Metrics.off() if cycled else metrics, tls),
        config.simulate,
    )


async def _serve(
    config: AgentConfig, plugin: CheckedPlugin, metrics: Metrics | None, tls: ssl.SSLContext | None
) -> None:
    """One connected life: the role over its own bus connection, until it returns (a
    peer after its ``[p2p] steps`` serves on) or is cancelled."""
    async with open_bus(config, bus_settings(config, will=status_will(config)), tls) as bus:
        role: Trainer | Peer
        if config.aggregator.mode is TrainingMode.P2P:
            from agent.roles.peer import Peer  # only a P2P device needs it

            role = Peer(config=config, bus=bus, plugin=plugin, metrics=metrics, tls=tls)
        else:
            role = Trainer(config=config, bus=bus, plugin=plugin, metrics=metrics, tls=tls)
        await serve_role(role, role.run())  # READY=1, STATUS= (systemd)
