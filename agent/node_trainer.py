"""A trainer process, the composition root of a device: load the plugin, open the bus,
build the ``Trainer`` and play it under systemd's notifications until it is cancelled.

Kept apart from ``agent.node`` (the aggregator's) so a device imports only what a trainer
needs: no aggregator role, no Prometheus client unless ``[metrics] port`` is set (a
lint-imports contract in ``pyproject.toml`` and ``tests/test_light_agent.py`` hold it).
"""

from __future__ import annotations

import asyncio

import structlog

from agent.config import AgentConfig
from agent.node_base import bus_settings, node_metrics, open_bus, tls_context
from agent.plugin.api import PluginContext
from agent.plugin.loader import load_plugin
from agent.roles.liveness import status_will
from agent.roles.trainer import Trainer
from agent.runtime.sdnotify import serve_role

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
    bus = open_bus(config, bus_settings(config, will=status_will(config)), tls)
    log.info(
        "agent_starting",
        role=str(config.role),
        agent_id=config.agent_id,
        federation=config.federation,
        plugin=plugin.name,
    )
    async with bus:
        trainer = Trainer(config=config, bus=bus, plugin=plugin, metrics=metrics, tls=tls)
        await serve_role(trainer, trainer.run())  # READY=1, STATUS= (systemd)
