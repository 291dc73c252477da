"""The ``Aggregator``: builds the parts of the role (``admission``, ``fit``, ``round``,
``status``, ``persistence``), registers their listeners and runs the schedule."""

from __future__ import annotations

import asyncio
import random
import secrets
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
from agent.messages.bodies import RoundPhase
from agent.messages.signing import Signer
from agent.plugin.api import Weights
from agent.role import Identity, Role
from agent.roles.aggregator.admission import Admission
from agent.roles.aggregator.buffered import buffered
from agent.roles.aggregator.evaluation import FederatedEvaluation
from agent.roles.aggregator.fit import CohortFit
from agent.roles.aggregator.persistence import RunStore
from agent.roles.aggregator.private_update import privacy_engine
from agent.roles.aggregator.receive import AggregatorListeners
from agent.roles.aggregator.records import AgentRecord, GlobalState, RoundObserver, RunSummary
from agent.roles.aggregator.rejoin import InboxReplay
from agent.roles.aggregator.resume import open_run
from agent.roles.aggregator.round import InForce, RoundParts
from agent.roles.aggregator.schedule import RunPlan, run_recorded
from agent.roles.aggregator.status import StatusBoard
from agent.roles.liveness import LivenessTracker
from agent.runtime.fairness import FairnessLimits, FairQueue
from agent.runtime.heap import return_large_frees
from agent.runtime.listeners import Dispatcher, Security
from agent.runtime.metrics import Metrics
from agent.runtime.outbox import Outbox
from agent.runtime.reassembly import Limits
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
        incarnation: this aggregator process's id (default: a fresh random one), said in
            ``federation_status`` and ``join_accepted``; trainers rejoin a new one.

    The run: the newest unfinished one under ``state_dir/runs``, resumed, or a new one.

    Raises:
        IdentityError: identities on, but the certificate is not an aggregator's.
        ConfigError: ``continue_from`` names no run with a model, or an unreadable run.
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
        incarnation: str | None = None,
    ) -> None:
        schedule, fed = config.aggregator, config.federation
        return_large_frees()  # model-sized buffers leave the RSS when freed (runtime.heap)
        self.incarnation = incarnation or secrets.token_hex(8)
        self.opened = opened = open_run(
            config.state_dir,
            rounds=schedule.rounds,
            continue_from=schedule.continue_from,
            initial=initial_weights,
        )
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
            chunk_size=config.transfer.chunk_size,
        )
        seal_key = X25519PrivateKey.generate() if credentials else None  # fresh per run (HPKE)
        self._now = InForce(0, GlobalState.taking(0, opened.initial))  # held once, as wire
        #: the run's files; ``store.on_round_persisted`` is the per-round hook (ledger)
        self.store = RunStore(opened.run_dir, incarnation=self.incarnation, mirror=config.state_dir)
        #: agent ids found revoked (by the node's registry watch), handled in ``run``
        self.revocations: asyncio.Queue[str] = asyncio.Queue()
        self.liveness = LivenessTracker(timeout=schedule.liveness_timeout)
        self.admission = Admission(
            outbox=outbox,
            plugin_name=plugin_name,
            wanted=schedule.min_available_clients,
            seal_key=seal_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            if seal_key
            else None,
            current=lambda: (self._now.round, self._now.model),
            incarnation=self.incarnation,
            run_id=opened.run_id,
            on_rejoin=InboxReplay(bus, fed).resend,
        )
        self.board = StatusBoard(
            liveness=self.liveness,
            admitted=self.admission.agents,
            current_round=lambda: self._now.round,
            revoked=self.admission.revoked,
            incarnation=self.incarnation,
            run_id=opened.run_id,
        )
        self.fit = CohortFit(
            outbox=outbox,
            schedule=schedule,
            federation=fed,
            strategy=strategy or build_strategy(schedule.strategy),
            alive=lambda a: self.liveness.alive(a) and a not in self.admission.revoked,
            metrics=self.metrics,
            declared=self.admission.declared,
            privacy=privacy_engine(schedule),
            population=lambda: len(self.admission.agents),
        )
        self.fit.on_stage = lambda r, stage: self.store.open_round(r, stage=str(stage))
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
            reconnected_at=lambda: self._reconnected_at,
            ledger=RoundLedger(
                config.state_dir,
                credentials.signer,
                schedule,
                run_id=opened.run_id,
                ca=credentials.ca,
            )
            if credentials
            else None,
        )
        self.sign_with = self._parts.sign_with  # a renewed certificate (runtime.own_renewal)
        #: set once the broker session is up with our subscriptions (systemd READY=1)
        self.ready = asyncio.Event()
        self.status_changed = self.board.text_changed  # pushes systemd's STATUS= (sdnotify)
        self._reconnected_at = float("-inf")
        bus.on_connect(self._on_connect)
        self.buffered = buffered(self._parts, self._now)  # None unless mode = "async"
        listeners = AggregatorListeners(self._parts, federation=fed, buffered=self.buffered)
        self.dispatcher = Dispatcher(
            federation=fed,
            registry=listeners.registry(),
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
            transfer=Limits.of(config.transfer),
            on_chunk=listeners.on_chunk,
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
        """Run (or resume) the run to its end and send ``finish``; ``rounds = 0``: until
        cancelled. Returns the run's records (``RunSummary.failure``: it trained nothing).
        Cancelled, the run stays unfinished and the next aggregator resumes it.

        Raises:
            RoundError: fewer than ``min_fit_clients`` agents joined within ``join_timeout``.
            RunFailedError: the fleet vanished (no cohort within ``join_timeout``).
        """
        for spec in (
            topics.JOIN,
            topics.UPDATE,
            topics.METRICS,
            topics.STATUS,
            topics.LEDGER,
            *topics.SECAGG_TOPICS,
        ):
            await self._bus.subscribe(spec.filter(self._fed))
        with structlog.contextvars.bound_contextvars(federation=self._fed, role="aggregator"):
            async with task_group() as tg:
                tasks = self._serve(tg)
                try:
                    return await self._federate()
                finally:
                    for task in tasks:
                        task.cancel()

    async def _on_connect(self, reconnect: bool) -> None:
        if reconnect:
            self._reconnected_at = self.board.reconnected()  # trainers resend what we lost

    async def idle(self) -> RunSummary | None:
        """Between runs (``after_run = "serve"``): keep receiving (liveness) and publishing
        ``federation_status`` (phase ``idle``), training nothing, until cancelled."""
        self.board.enter(RoundPhase.IDLE, f"idle: {self.opened.run_id} ended; enrollment open")
        self.board.changed()
        with structlog.contextvars.bound_contextvars(federation=self._fed, role="aggregator"):
            async with task_group() as tg:
                self._serve(tg)
        return None

    def _serve(self, tg: asyncio.TaskGroup) -> list[asyncio.Task[None]]:
        """The tasks of a running aggregator, in run and idle alike: the receive pipeline,
        systemd readiness, ``federation_status`` and revocations."""
        every = self._schedule.status_every
        return [
            tg.create_task(self.dispatcher.run(self._bus), name="aggregator-receive"),
            tg.create_task(self._mark_ready(), name="aggregator-ready"),
            tg.create_task(self.board.report(self._outbox, every=every), name="aggregator-status"),
            tg.create_task(self._handle_revocations(), name="aggregator-revocations"),
        ]

    async def _federate(self) -> RunSummary:
        opened = self.opened
        plan = RunPlan(opened.run_id, self.incarnation, opened.resumed)
        loop = None if self.buffered is None else self.buffered.federate
        return await run_recorded(self._parts, self._now, self.store, plan, opened.run_dir, loop)

    def note_revoked(self, agent_id: str) -> None:
        """``agent_id`` is revoked (the registry says so): it leaves at once (``run``)."""
        if agent_id not in self.admission.revoked:
            self.admission.revoked.add(agent_id)  # out of cohorts and liveness at once
            self.revocations.put_nowait(agent_id)

    async def _handle_revocations(self) -> None:
        while True:
            agent_id = await self.revocations.get()
            self.fit.on_revoked(agent_id)
            await self.admission.revoke(agent_id)
            self.board.changed()

    async def _mark_ready(self) -> None:
        await self._bus.wait_connected()
        self.ready.set()
