"""The ``Aggregator``: builds the parts of the role (``admission``, ``fit``, ``round``,
``status``, ``persistence``), registers their listeners and runs the schedule."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import structlog
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.bus.base import Bus
from agent.config import AgentConfig
from agent.errors import IdentityError
from agent.identity.local import Credentials
from agent.ledger.book import RoundLedger
from agent.messages import topics
from agent.messages.bodies import AgentStatus, EvaluateRes, Liveness
from agent.messages.envelope import Message
from agent.messages.kinds import Kind
from agent.messages.signing import Signer
from agent.plugin.api import Weights
from agent.role import Identity, Role
from agent.roles.aggregator.admission import Admission
from agent.roles.aggregator.evaluation import FederatedEvaluation
from agent.roles.aggregator.fit import CohortFit
from agent.roles.aggregator.persistence import RunStore
from agent.roles.aggregator.private_update import privacy_engine
from agent.roles.aggregator.records import AgentRecord, GlobalState, RoundObserver, RunSummary
from agent.roles.aggregator.round import InForce, RoundParts
from agent.roles.aggregator.schedule import federate
from agent.roles.aggregator.status import StatusBoard
from agent.roles.liveness import LivenessTracker
from agent.runtime.fairness import FairnessLimits, FairQueue
from agent.runtime.listeners import Dispatcher, ListenerRegistry, RoundPolicy, Security
from agent.runtime.metrics import Metrics
from agent.runtime.outbox import Outbox
from agent.runtime.tasks import task_group
from agent.strategy.base import Strategy
from agent.strategy.factory import build_strategy

log = structlog.get_logger(__name__)


class Aggregator:
    """The aggregator role over one ``bus``.

    Args:
        config: the agent config (``role = "aggregator"``), its ``[aggregator]`` table used.
        bus: a bus that is entered (connected or connecting).
        plugin_name: agents must join with this plugin.
        initial_weights: the model of round 0.
        strategy: how each round's aggregated update becomes the next model (default: the
            one ``[aggregator.strategy]`` names, FedAvg unless set).
        observer: called with every ``RoundRecord``.
        revoked: with identities on, called for every verified sender; True refuses its
            messages (``agent.node.enrolled_check`` asks the registry).
        metrics: where the role counts (default: a registry of its own).

    Raises:
        IdentityError: identities on, but the certificate is not an aggregator's.
    """

    def __init__(
        self,
        *,
        config: AgentConfig,
        bus: Bus,
        plugin_name: str,
        initial_weights: Weights,
        strategy: Strategy | None = None,
        observer: RoundObserver | None = None,
        revoked: Callable[[Identity], bool] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        schedule, fed = config.aggregator, config.federation
        self._bus, self._fed, self._schedule = bus, fed, schedule
        self.metrics = Metrics() if metrics is None else metrics
        credentials = (
            Credentials.load(config.identity, agent_id=config.agent_id, federation=fed)
            if config.identity.enabled
            else None
        )
        if credentials is not None and credentials.identity.role is not Role.AGGREGATOR:
            raise IdentityError("wrong_identity", "the aggregator needs an aggregator certificate")
        self._outbox = outbox = Outbox(
            bus,
            federation=fed,
            sender=config.agent_id,
            signer=credentials.signer if credentials else None,
            metrics=self.metrics,
        )
        # A fresh sealing key per run: agents seal their updates to it (HPKE).
        seal_key = X25519PrivateKey.generate() if credentials else None
        self._now = InForce(0, GlobalState.of(0, initial_weights))
        self._store = RunStore(config.state_dir)
        self.liveness = LivenessTracker(timeout=schedule.liveness_timeout)
        self.admission = Admission(
            outbox=outbox,
            plugin_name=plugin_name,
            wanted=schedule.min_available_clients,
            seal_key=seal_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            if seal_key
            else None,
            current=lambda: (self._now.round, self._now.model),
        )
        self.board = StatusBoard(
            liveness=self.liveness,
            admitted=self.admission.agents,
            current_round=lambda: self._now.round,
        )
        self.fit = CohortFit(
            outbox=outbox,
            schedule=schedule,
            federation=fed,
            strategy=strategy or build_strategy(schedule.strategy),
            alive=self.liveness.alive,
            metrics=self.metrics,
            declared=self.admission.declared,
            privacy=privacy_engine(schedule),
            population=lambda: len(self.admission.agents),
        )
        self._evaluation = FederatedEvaluation(
            outbox,
            timeout=schedule.eval_timeout,
            config=schedule.eval_config,
            metrics=self.metrics,
            robust=schedule.robust,
            declared=self.admission.declared,
        )
        self._parts = RoundParts(
            schedule=schedule,
            outbox=outbox,
            rng=random.Random(schedule.seed),
            admission=self.admission,
            liveness=self.liveness,
            fit=self.fit,
            evaluation=self._evaluation,
            board=self.board,
            metrics=self.metrics,
            observer=observer,
            connected=bus.wait_connected,
            reconnects=lambda: self._reconnects,
            ledger=RoundLedger(config.state_dir, credentials.signer, schedule)
            if credentials
            else None,
        )
        #: set once the broker session is up with our subscriptions (systemd READY=1)
        self.ready = asyncio.Event()
        self._reconnects = 0
        bus.on_connect(self._on_connect)
        registry = ListenerRegistry()
        registry.register(Kind.JOIN, self.admission.on_join, rounds=RoundPolicy.ANY)
        registry.register(Kind.MODEL_UPDATE, self.fit.on_update, rounds=RoundPolicy.CURRENT)
        registry.register(Kind.METRICS, self._on_metrics, rounds=RoundPolicy.CURRENT)
        registry.register(Kind.STATUS, self._on_status, rounds=RoundPolicy.ANY)
        for kind in (Kind.ADVERTISE_KEYS, Kind.SHARE_KEYS, Kind.MASKED_INPUT, Kind.UNMASK):
            registry.register(kind, self.fit.on_secagg, rounds=RoundPolicy.CURRENT)
        self.dispatcher = Dispatcher(
            federation=fed,
            registry=registry,
            current_round=lambda: self._now.round,
            max_payload=config.max_payload,
            security=(
                Security(credentials.verifier(revoked=revoked), unseal_key=seal_key)
                if credentials
                else None
            ),
            metrics=self.metrics,
            fairness=FairQueue(
                fed,
                limits=FairnessLimits.of(rate=schedule.sender_rate),
                metrics=self.metrics,
            ),
            seen=self.liveness.touch,
        )

    @property
    def signer(self) -> Signer | None:
        """The aggregator's signer (None with identities off); enrollment replies use it."""
        return self._outbox.signer

    @property
    def round(self) -> int:
        """The current round (0 until round 1 starts)."""
        return self._now.round

    @property
    def global_state(self) -> GlobalState:
        """The global model in force."""
        return self._now.model

    @property
    def agents(self) -> dict[str, AgentRecord]:
        """The admitted agents, by agent id."""
        return self.admission.agents

    @property
    def status(self) -> str:
        """What the aggregator is doing, for humans (systemd ``STATUS=``)."""
        return self.board.text

    async def run(self) -> RunSummary:
        """Run the whole schedule and send ``finish``. Returns the run's records.

        Raises:
            RoundError: fewer than ``min_fit_clients`` agents joined within ``join_timeout``.
        """
        for spec in (
            topics.JOIN,
            topics.UPDATE,
            topics.METRICS,
            topics.STATUS,
            *topics.SECAGG_TOPICS,
        ):
            await self._bus.subscribe(spec.filter(self._fed))
        with structlog.contextvars.bound_contextvars(federation=self._fed, role="aggregator"):
            async with task_group() as tg:
                tasks = [
                    tg.create_task(self.dispatcher.run(self._bus), name="aggregator-receive"),
                    tg.create_task(self._mark_ready(), name="aggregator-ready"),
                    tg.create_task(
                        self.board.report(self._outbox, every=self._schedule.status_every),
                        name="aggregator-status",
                    ),
                ]
                try:
                    return await federate(self._parts, self._now, self._store)
                finally:
                    for task in tasks:
                        task.cancel()

    async def _on_connect(self, reconnect: bool) -> None:
        self._reconnects += reconnect

    async def _mark_ready(self) -> None:
        await self._bus.wait_connected()
        self.ready.set()

    # -- listeners that span parts (the others are the parts' own) ----------------------

    async def _on_metrics(self, message: Message[EvaluateRes]) -> None:
        if message.sender not in self.admission.agents:
            log.warning("metrics_rejected", agent=message.sender, reason="not_admitted")
            return
        self._evaluation.on_metrics(message.sender, message.body)

    async def _on_status(self, message: Message[AgentStatus]) -> None:
        sender, body = message.sender, message.body
        if not self.liveness.update(sender, body):
            return
        log.info("agent_status", agent=sender, state=str(body.state), detail=body.detail)
        if body.state is Liveness.OFFLINE:
            self.fit.on_offline(sender)
            self._evaluation.forget(sender)
        self.board.changed()
