"""The trainer role: a long-lived agent that joins, trains when asked, evaluates on request.

Listeners (kind → handler, round policy):

=================  ===================  ==========  ======================================
kind               topic                rounds      may send
=================  ===================  ==========  ======================================
join_accepted      inbox                any         —
join_rejected      inbox                any         —
model_para         global, inbox        any         —  (keeps the newest verified model)
fit_ins            inbox                not stale   model_update, or advertise_keys and
                                                    later masked_input (SecAgg+)
relay_keys         inbox                current     share_keys
relay_shares       inbox                current     —  (lets the masking proceed)
unmask_request     secagg broadcast     not stale   unmask  (only a survivor of its round)
evaluate           evaluate             not stale   metrics
finish             finish               any         join (again, for the next run)
federation_status  federation_status    any         join (again: a new aggregator incarnation)
=================  ===================  ==========  ======================================

The parts: ``ModelStore`` (model_para), ``FitPath`` (fit_ins, and the SecAgg+ stages, which it
hands to the round's ``SecureFit``), ``evaluate``, ``StatusPublisher`` (status heartbeats);
``Progress`` is their shared round and ``TrainerState``. Fits and evaluations run in the
role's ``Worker`` (one of each at a time, a newer round's superseding an older one's).

After ``finish`` the agent stays up, idle, and re-joins with a capped backoff so that the next
run's aggregator finds it. It follows the aggregator: a ``federation_status`` from an
incarnation other than the one that admitted it (the aggregator restarted, crashed, failed
over) makes it join again at once and take the new sealing key. A ``join_rejected`` saying
the agent is revoked (identities on: signed by the aggregator) stops it:
``run`` raises ``AgentRevokedError`` and the process exits with its status.
"""

from __future__ import annotations

import asyncio
import ssl
from functools import partial

import structlog
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from agent.bus.backoff import Backoff
from agent.bus.base import Bus
from agent.config import AgentConfig
from agent.messages import topics
from agent.messages.bodies import (
    EvaluateIns,
    FederationStatus,
    Finish,
    GlobalModel,
    JoinAccepted,
    JoinRejected,
    Liveness,
)
from agent.messages.envelope import Message
from agent.messages.kinds import Kind
from agent.plugin.loader import CheckedPlugin
from agent.roles.trainer import identified
from agent.roles.trainer.attempt import JoinAttempts, keeps
from agent.roles.trainer.catchup import LedgerCatchUp
from agent.roles.trainer.evaluate import evaluate
from agent.roles.trainer.fit import FitPath
from agent.roles.trainer.follow import Follower
from agent.roles.trainer.model import HeldModel, ModelStore
from agent.roles.trainer.resend import AggregatorReconnects
from agent.roles.trainer.status import Progress, StatusPublisher, TrainerState
from agent.runtime.credits import Credits
from agent.runtime.listeners import Dispatcher, ListenerRegistry, RoundPolicy, Security
from agent.runtime.metrics import Metrics
from agent.runtime.outbox import Outbox
from agent.runtime.reassembly import Limits
from agent.runtime.tasks import Worker, task_group

log = structlog.get_logger(__name__)


class Trainer:
    """The trainer role over one ``bus``. ``run()`` returns only when cancelled."""

    def __init__(
        self,
        *,
        config: AgentConfig,
        bus: Bus,
        plugin: CheckedPlugin,
        metrics: Metrics | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._config = config
        self._bus = bus
        self._plugin = plugin
        self._fed = config.federation
        self._id = config.agent_id
        credentials = identified.credentials(config)  # None with identities off
        self._outbox = Outbox(
            bus,
            federation=self._fed,
            sender=self._id,
            signer=credentials.signer if credentials else None,
            metrics=metrics,
            chunk_size=config.transfer.chunk_size,
        )
        #: this trainer's Prometheus series (its own registry unless one was injected)
        self.metrics = self._outbox.metrics
        self._progress = Progress()
        self._models = ModelStore(
            progress=self._progress,
            wait=config.trainer.model_wait,
            path=config.state_dir / "global_model.npz",
            ledger=identified.ledger_head(config, credentials),
        )
        self._work = Worker("trainer")
        #: renews the certificate before it expires (identities on; reloads ``tls`` too)
        self._renewer = identified.renewer(config, self._outbox, credentials, tls)
        self._fits = FitPath(
            config=config,
            plugin=plugin,
            outbox=self._outbox,
            models=self._models,
            progress=self._progress,
            work=self._work,
        )
        self._status = StatusPublisher(
            bus=bus,
            outbox=self._outbox,
            agent_id=self._id,
            progress=self._progress,
            model_version=lambda: self.model.version if self.model else None,
            heartbeat=config.trainer.heartbeat,
        )
        self._fits.on_failed = partial(self._status.send, Liveness.ONLINE)
        self._admitted = asyncio.Event()
        self._rejoin = asyncio.Event()
        self._attempts = JoinAttempts()  # which join an answer answers
        #: the aggregator incarnation we follow
        self.follow = Follower(self._id, signed=credentials is not None)
        self._resend = AggregatorReconnects(bus)  # its node died: publish again
        #: set once the broker session is up with our subscriptions (systemd READY=1)
        self.ready = asyncio.Event()
        self.status_changed = self._progress.changed  # pushes systemd's STATUS= (sdnotify)
        registry = ListenerRegistry()
        registry.register(Kind.JOIN_ACCEPTED, self._on_join_accepted, rounds=RoundPolicy.ANY)
        registry.register(Kind.JOIN_REJECTED, self._on_join_rejected, rounds=RoundPolicy.ANY)
        registry.register(Kind.MODEL_PARA, self._models.on_model, rounds=RoundPolicy.ANY)
        registry.register(Kind.FIT_INS, self._fits.on_fit_ins, rounds=RoundPolicy.NOT_STALE)
        registry.register(Kind.RELAY_KEYS, self._fits.on_secagg, rounds=RoundPolicy.CURRENT)
        registry.register(Kind.RELAY_SHARES, self._fits.on_secagg, rounds=RoundPolicy.CURRENT)
        # A broadcast: agents outside the round read it too (their round may be older).
        registry.register(Kind.UNMASK_REQUEST, self._fits.on_secagg, rounds=RoundPolicy.NOT_STALE)
        registry.register(Kind.EVALUATE, self._on_evaluate, rounds=RoundPolicy.NOT_STALE)
        registry.register(Kind.FINISH, self._on_finish, rounds=RoundPolicy.ANY)
        registry.register(
            Kind.FEDERATION_STATUS, self._on_federation_status, rounds=RoundPolicy.ANY
        )
        # chunked uploads wait for the aggregator's acknowledgements (runtime.credits)
        self._outbox.credits = credits = Credits(wait=config.transfer.timeout)
        registry.register(Kind.CHUNK_ACK, lambda m: credits.on_ack(m.body), rounds=RoundPolicy.ANY)
        if self._renewer is not None:
            registry.register(Kind.RENEW_REPLY, self._renewer.on_reply, rounds=RoundPolicy.ANY)
        if credentials is not None:  # more records missed than a model carries: fetch them
            self._catch_up = LedgerCatchUp(self._outbox, self._id)
            self._models.on_behind = self._on_ledger_behind
            registry.register(
                Kind.LEDGER_RECORDS, self._catch_up.on_records, rounds=RoundPolicy.ANY
            )
        self.dispatcher = Dispatcher(
            federation=self._fed,
            registry=registry,
            current_round=lambda: self._progress.round,
            max_payload=config.max_payload,
            security=Security(credentials.verifier()) if credentials else None,
            metrics=self.metrics,
            transfer=Limits.of(config.transfer),
        )

    @property
    def admitted(self) -> bool:
        """Whether an aggregator admitted us (and we have not re-joined since)."""
        return self._admitted.is_set()

    @property
    def round(self) -> int:
        """The newest round this agent follows."""
        return self._progress.round

    @property
    def model(self) -> HeldModel | None:
        """The newest verified global model, if any."""
        return self._models.held

    @property
    def state(self) -> TrainerState:
        """What the agent is doing."""
        return self._progress.state

    @property
    def status(self) -> str:
        """What the agent is doing, for humans (``round 3: training``): the ``STATUS=`` of
        the service manager and the ``detail`` of its status messages."""
        return self._progress.detail

    async def run(self) -> None:
        """Subscribe, join, and serve until cancelled."""
        for spec in (
            topics.GLOBAL_MODEL,
            topics.EVALUATE,
            topics.FINISH,
            topics.FEDERATION_STATUS,
            topics.SECAGG_UNMASK_REQUEST,
        ):
            await self._bus.subscribe(spec.format(self._fed))
        await self._bus.subscribe(topics.INBOX.format(self._fed, self._id))
        self._bus.on_connect(self._on_connect)
        with structlog.contextvars.bound_contextvars(agent_id=self._id, federation=self._fed):
            try:
                async with self._work.running(), task_group() as tg:
                    tg.create_task(self.dispatcher.run(self._bus), name="trainer-receive")
                    tg.create_task(self._mark_ready(), name="trainer-ready")
                    tg.create_task(self._join_loop(), name="trainer-join")
                    tg.create_task(self._status.heartbeat(), name="trainer-heartbeat")
                    tg.create_task(self._resend.run(), name="trainer-resend")
                    tg.create_task(self.follow.stop_when_revoked(), name="trainer-revoked")
                    if self._renewer is not None:
                        tg.create_task(self._renewer.run(), name="trainer-renew")
            finally:
                await self._status.say_offline()

    async def _mark_ready(self) -> None:
        await self._bus.wait_connected()
        self.ready.set()

    # -- joining ------------------------------------------------------------------------

    async def _on_connect(self, reconnect: bool) -> None:
        await self._status.send(Liveness.ONLINE)
        if reconnect:
            self._resend.reconnected()
            log.info("rejoining_after_reconnect")
            self._attempts.renew()  # its answer may be lost: not a retry
            self._rejoin.set()

    async def _join_loop(self) -> None:
        retry = self._config.trainer.join_retry
        while True:
            delays = Backoff(initial=retry, maximum=max(retry, 30.0)).delays()
            while not self._admitted.is_set():
                await self._send_join()
                try:
                    async with asyncio.timeout(next(delays)):
                        await self._admitted.wait()
                except TimeoutError:
                    continue
            await self._rejoin.wait()
            self._rejoin.clear()
            self._admitted.clear()
            self._attempts.renew()
            if self._progress.state is not TrainerState.FINISHED:
                self._progress.enter(TrainerState.JOINING)

    async def _send_join(self) -> None:
        body = self._attempts.request(self._id, self._plugin, held=self.model)
        if await self._outbox.try_send(topics.JOIN, body, round=self._progress.round) is not None:
            log.info("join_sent", num_examples=body.num_examples)

    async def _on_join_accepted(self, message: Message[JoinAccepted]) -> None:
        body = message.body
        if self.follow.stale(body):
            log.info("join_accepted_stale", round=body.round)
            return
        if self._attempts.answered_again(body, admitted=self._admitted.is_set()):
            return  # the answer to a retry of the join that admitted us: nothing new
        # A new admission may belong to a new run of the federation: follow its round.
        self._progress.round = body.round
        seal_key = body.seal_key
        self._outbox.seal_to = X25519PublicKey.from_public_bytes(seal_key) if seal_key else None
        self.follow.admitted_by(body.incarnation, run_id=body.run_id, round=body.round)
        if self._outbox.signer is not None and seal_key is None:
            log.error(
                "no_sealing_key", aggregator=message.sender, consequence="updates will not be sent"
            )
        if not keeps(self.model, body):
            self._models.forget()  # not the model in force (maybe another run's)
        if self._fits.admitted_at is None:
            self._fits.admitted_at = message.envelope.timestamp
        self._progress.enter(TrainerState.IDLE)
        self._admitted.set()
        log.info("join_accepted", aggregator=message.sender, round=self._progress.round)

    async def _on_join_rejected(self, message: Message[JoinRejected]) -> None:
        self._progress.enter(TrainerState.REJECTED)
        body = message.body
        log.error(
            "join_rejected", aggregator=message.sender, reason=body.reason, code=str(body.code)
        )
        self.follow.rejected(body, aggregator=message.sender)

    async def _on_federation_status(self, message: Message[FederationStatus]) -> None:
        """A new aggregator incarnation: join it at once (it has a new sealing key)."""
        self._resend.saw(message.body)
        if not self.follow.is_new(message.body.incarnation):
            return
        if not self._admitted.is_set():
            await self._send_join()  # do not wait for the join backoff
            return
        log.info("aggregator_restarted", incarnation=message.body.incarnation)
        self._rejoin.set()

    def _on_ledger_behind(self, message: Message[GlobalModel]) -> None:
        """Fetch the records between (in the worker: the answers come through the receive
        loop), then offer the model again (``catchup.LedgerCatchUp.bridge``)."""
        bridge = partial(self._catch_up.bridge, self._models, message, self._progress.round)
        self._work.start(Kind.LEDGER_REQUEST, bridge)

    # -- evaluating and finishing -------------------------------------------------------

    async def _on_evaluate(self, message: Message[EvaluateIns]) -> None:
        # Rejoining after a reconnect, still a member: its copy is not resent (message id)
        rejoining = self._progress.state is TrainerState.JOINING and self.follow.incarnation
        if not (self._admitted.is_set() or rejoining):
            return
        self._progress.round = message.round
        work = partial(
            evaluate,
            message.round,
            message.body,
            plugin=self._plugin,
            models=self._models,
            outbox=self._outbox,
            agent_id=self._id,
        )
        self._work.start(Kind.EVALUATE, work)

    async def _on_finish(self, message: Message[Finish]) -> None:
        body = message.body
        log.info("federation_finished", reason=body.reason, final_version=body.final_version)
        self._progress.enter(TrainerState.FINISHED)
        # Stay up, idle; join again (with backoff) so the next run's aggregator finds us.
        self._rejoin.set()
