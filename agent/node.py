"""One agent process, the composition root: load the plugin, open the bus, build and play
the configured role (``agent.roles``) over the runtime (``agent.runtime``), which never
imports the roles. A trainer is composed by ``agent.node_trainer`` (which never imports the
aggregator role; ``fedbus run`` goes there directly), the aggregator here; what both share
is ``agent.node_base``, whose names this module re-exports.

``run_node`` owns everything it starts (an ``AsyncExitStack`` for the bus, the role's
``TaskGroup`` for tasks); cancelling it (SIGTERM, Ctrl-C) unwinds all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from agent.bus.base import Bus
from agent.config import AgentConfig, TrainingMode
from agent.errors import PluginError
from agent.identity.ca import CertificateAuthority, load_ca
from agent.identity.local import Credentials
from agent.identity.registry import CertStatus, Registry
from agent.messages.signing import Signer
from agent.node_base import (
    STOP_SIGNALS,
    bus_settings,
    node_metrics,
    open_bus,
    run_until_signal,
    tls_context,
)
from agent.node_trainer import run_trainer
from agent.plugin.api import PluginContext, Weights
from agent.plugin.loader import CheckedPlugin, load_plugin
from agent.role import Identity, Role
from agent.roles.aggregator import Aggregator
from agent.roles.aggregator.records import RoundObserver, RunSummary
from agent.roles.aggregator.service import serve as serve_aggregator
from agent.roles.peer.announce import announce_revocations
from agent.runtime.auth_callout import callout_for, serve_callout
from agent.runtime.crl_refresh import crl_refresher_for
from agent.runtime.enrollment import EnrollmentService
from agent.runtime.evict import evictor_for, on_revoked
from agent.runtime.outbox import Outbox
from agent.runtime.own_renewal import OwnRenewer
from agent.runtime.renewal import renewal_for
from agent.runtime.sdnotify import serve_role

__all__ = [
    "STOP_SIGNALS",
    "bus_settings",
    "enrolled_check",
    "export_final_model",
    "open_bus",
    "run_node",
    "run_until_signal",
    "tls_context",
]

log = structlog.get_logger(__name__)


async def run_node(
    config: AgentConfig, *, observer: RoundObserver | None = None
) -> RunSummary | None:
    """Run the configured role until it ends (aggregator) or is cancelled (trainer).

    Returns the aggregator's ``RunSummary``; a trainer returns only by cancellation.

    Raises:
        PluginError, ConfigError, RoundError: as raised by the plugin, bus URL or rounds.
    """
    if config.role is Role.TRAINER:
        await run_trainer(config)
        return None
    config.state_dir.mkdir(parents=True, exist_ok=True)
    metrics = node_metrics(config, always=True)
    context = PluginContext(config.agent_id, config.plugin.options, config.state_dir)
    plugin = await asyncio.to_thread(load_plugin, config.plugin.name, context)
    tls = tls_context(config)
    bus = open_bus(config, bus_settings(config), tls)
    log.info(
        "agent_starting",
        role=str(config.role),
        agent_id=config.agent_id,
        federation=config.federation,
        plugin=plugin.name,
    )
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(bus)
        weights = await asyncio.to_thread(plugin.get_weights)
        ca_dir = config.identity.ca_dir
        registry = None
        enrollment = None
        revoked = None
        built: list[Aggregator] = []  # the current run's (its signer follows a renewal)
        services: list[Coroutine[Any, Any, None]] = []  # for the process's lifetime
        if ca_dir is not None:
            registry = stack.enter_context(
                Registry.open(config.identity.registry or ca_dir / "registry.sqlite")
            )
            # Enrollment is answered on a second connection, for the whole process.
            enroll_bus = await stack.enter_async_context(
                open_bus(config, bus_settings(config, suffix="enroll"), tls)
            )
            authority = load_ca(ca_dir)
            enrollment = EnrollmentService(
                enroll_bus,
                authority,
                registry,
                config.federation,
                sender=config.agent_id,
                ca_dir=ca_dir,
                signer=_signer(config),
                renewal=renewal_for(config, enroll_bus, authority, registry, metrics=metrics),
            )
            crl = crl_refresher_for(config, authority, registry, metrics.registry)
            if crl is not None:
                services.append(crl.run())
            callout = callout_for(config, authority.cert, registry)
            if callout is not None and tls is not None:  # NATS: admits enrolled devices
                services.append(serve_callout(callout, config.bus_url, tls=tls))
            # a revoked agent's open connection is closed, after the broker's CRL reload
            revoked = on_revoked(evictor_for(config, tls), crl.refresh if crl else None)
            announcer = _revocation_outbox(config, bus)
            if config.identity.enabled:  # its own certificate, renewed from its own CA
                renewer = _own_renewer(config, authority, registry, tls, built, enrollment)
                services.append(renewer(announcer))
            if announcer is not None:  # p2p: the peers drop revoked senders by this CRL
                services.append(announce_revocations(announcer, authority, registry))
        incarnation = secrets.token_hex(8)
        log.info("aggregator_incarnation", incarnation=incarnation)
        # one for every run, flushed before the registry closes (last_seen batched: issue 15)
        seen = enrolled_check(registry) if registry else None
        if seen is not None:
            stack.callback(seen.flush)

        def build() -> Aggregator:
            built[:] = [
                Aggregator(
                    config=config,
                    bus=bus,
                    plugin_name=plugin.name,
                    initial_weights=weights,
                    observer=observer,
                    revoked=seen,
                    metrics=metrics,
                    incarnation=incarnation,
                )
            ]
            return built[0]

        async def finished(aggregator: Aggregator) -> None:
            await export_final_model(plugin, aggregator.global_state.weights, config)

        return await serve_aggregator(
            build,
            after_run=config.aggregator.after_run,
            play=serve_role,
            finished=finished,
            registry=registry,
            enrollment=enrollment,
            services=services,
            on_revoked=revoked,
            train=config.aggregator.mode is not TrainingMode.P2P,
        )


def _own_renewer(
    config: AgentConfig,
    authority: CertificateAuthority,
    registry: Registry,
    tls: ssl.SSLContext | None,
    built: list[Aggregator],
    enrollment: EnrollmentService,
) -> Callable[[Outbox | None], Coroutine[Any, Any, None]]:
    """The aggregator's own renewal (``runtime.own_renewal``): a new signer goes to the
    current run's aggregator (``built``), to the enrollment service and to the outbox given
    (p2p: the revocation announcer's)."""

    def start(outbox: Outbox | None) -> Coroutine[Any, Any, None]:
        def adopt(signer: Signer) -> None:
            if built:
                built[-1].sign_with(signer)
            enrollment.sign_with(signer)
            if outbox is not None:
                outbox.signer = signer

        own = OwnRenewer(authority, registry, config, adopt, tls)
        own.renew_before = config.identity.renew_before_days * 86400.0
        return own.run()

    return start


def _revocation_outbox(config: AgentConfig, bus: Bus) -> Outbox | None:
    """P2P with identities: the outbox the CA host announces ``revocations`` on
    (``roles.peer.revocation``); None otherwise (an aggregator drops revoked senders itself)."""
    if not config.identity.enabled or config.aggregator.mode is not TrainingMode.P2P:
        return None
    return Outbox(
        bus,
        federation=config.federation,
        sender=config.agent_id,
        signer=_signer(config),
        chunk_size=config.transfer.chunk_size,
    )


def _signer(config: AgentConfig) -> Signer | None:
    """The aggregator's signer (enrollment replies are signed with it); None without identities."""
    if not config.identity.enabled:
        return None
    ids = config.identity
    return Credentials.load(ids, agent_id=config.agent_id, federation=config.federation).signer


async def export_final_model(plugin: CheckedPlugin, weights: Weights, config: AgentConfig) -> None:
    """The plugin's ``export`` hook on the run's final model, as ``state_dir/model.<ext>``
    (ONNX for the first-party plugins). A plugin without the hook exports nothing; a failing
    export is logged, not fatal: the run's results are already persisted."""
    try:
        path = await asyncio.to_thread(plugin.export, weights, config.state_dir / "model")
    except PluginError as exc:
        log.warning("final_model_not_exported", error=str(exc))
        return
    if path is not None:
        log.info("final_model_exported", path=str(path))


class enrolled_check:  # noqa: N801 - called like the function it was
    """The aggregator's revocation check: ``check(identity)`` is True (refuse) unless
    ``identity`` presents the current certificate of an enrolled, unrevoked agent. Records
    when an agent was last seen (at most every ``touch_every`` s per agent), in one
    transaction per ``flush_every`` s at most: a thousand agents joining at once cost a
    thousand fsyncs on the event loop. ``flush()`` writes what is pending (``run_node``
    calls it when the aggregator stops, or the last batch would be lost)."""

    def __init__(
        self, registry: Registry, *, touch_every: float = 30.0, flush_every: float = 2.0
    ) -> None:
        self._registry, self._touch_every, self._flush_every = registry, touch_every, flush_every
        self._touched: dict[str, float] = {}
        self._pending: list[str] = []
        self._flushed = time.monotonic()

    def __call__(self, identity: Identity) -> bool:
        status = self._registry.cert_status(identity.agent_id, identity.serial)
        if status is not CertStatus.CURRENT:
            log.warning("sender_not_trusted", agent=identity.agent_id, status=str(status))
            return True
        now = time.monotonic()
        if now - self._touched.get(identity.agent_id, -self._touch_every) >= self._touch_every:
            self._touched[identity.agent_id] = now
            self._pending.append(identity.agent_id)
        if now - self._flushed >= self._flush_every:
            self.flush()
        return False

    def flush(self) -> None:
        """Record the pending agents' ``last_seen`` now (one transaction; none if none)."""
        self._flushed = time.monotonic()
        if self._pending:
            self._registry.touch_many(self._pending)
            self._pending.clear()
