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
unmask_request     inbox                current     unmask
evaluate           evaluate             not stale   metrics
finish             finish               any         join (again, for the next run)
=================  ===================  ==========  ======================================

With SecAgg+ (``fit_ins.secagg`` set, see ``agent.roles.secure_fit``) the agent sends its
model delta masked, never the weights; ``trainer.require_secure_aggregation`` refuses rounds
that would send it in the clear.

Training and evaluation run in a worker thread (``asyncio.to_thread``) so the event loop keeps
serving the bus. After ``finish`` the agent stays up, idle, and re-joins with a capped backoff
so that the next run's aggregator finds it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import structlog
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from agent.bus.backoff import Backoff
from agent.bus.base import Bus
from agent.config import AgentConfig
from agent.errors import FedbusError
from agent.identity.local import Credentials
from agent.messages import topics
from agent.messages.bodies import (
    AgentStatus,
    EvaluateIns,
    EvaluateRes,
    Finish,
    FitIns,
    GlobalModel,
    JoinAccepted,
    JoinRejected,
    JoinRequest,
    Liveness,
    MaskedInput,
    ModelUpdate,
    RelayKeys,
    RelayShares,
    UnmaskRequest,
)
from agent.messages.envelope import Message
from agent.messages.kinds import Kind
from agent.messages.tensors import digest, to_arrays, to_tensor, to_tensors
from agent.plugin.api import FitResult, Weights
from agent.plugin.loader import CheckedPlugin
from agent.roles.secure_fit import REFUSED, SecureFit, parse_setup
from agent.runtime.listeners import Dispatcher, ListenerRegistry, RoundPolicy, Security
from agent.runtime.metrics import Metrics
from agent.runtime.outbox import Outbox
from agent.runtime.tasks import task_group
from agent.secagg.vector import flatten
from agent.state import write_weights

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class HeldModel:
    """The newest global model this agent accepted."""

    version: int
    sha256: str
    weights: Weights


class Trainer:
    """The trainer role over one ``bus``. ``run()`` returns only when cancelled."""

    def __init__(
        self,
        *,
        config: AgentConfig,
        bus: Bus,
        plugin: CheckedPlugin,
        metrics: Metrics | None = None,
    ) -> None:
        self._config = config
        self._bus = bus
        self._plugin = plugin
        self._fed = config.federation
        self._id = config.agent_id
        credentials = (
            Credentials.load(config.identity, agent_id=self._id, federation=self._fed)
            if config.identity.enabled
            else None
        )
        self._outbox = Outbox(
            bus,
            federation=self._fed,
            sender=self._id,
            signer=credentials.signer if credentials else None,
            metrics=metrics,
        )
        self.metrics = self._outbox.metrics
        self.round = 0
        self.model: HeldModel | None = None
        self.status = "joining"
        self._model_arrived = asyncio.Condition()
        self._admitted = asyncio.Event()
        self._rejoin = asyncio.Event()
        self._work: dict[Kind, asyncio.Task[None]] = {}
        self._secure: SecureFit | None = None
        #: set once the broker session is up with our subscriptions (systemd READY=1)
        self.ready = asyncio.Event()
        registry = ListenerRegistry()
        registry.register(Kind.JOIN_ACCEPTED, self._on_join_accepted, rounds=RoundPolicy.ANY)
        registry.register(Kind.JOIN_REJECTED, self._on_join_rejected, rounds=RoundPolicy.ANY)
        registry.register(Kind.MODEL_PARA, self._on_model, rounds=RoundPolicy.ANY)
        registry.register(Kind.FIT_INS, self._on_fit_ins, rounds=RoundPolicy.NOT_STALE)
        registry.register(Kind.RELAY_KEYS, self._on_relay_keys, rounds=RoundPolicy.CURRENT)
        registry.register(Kind.RELAY_SHARES, self._on_relay_shares, rounds=RoundPolicy.CURRENT)
        registry.register(Kind.UNMASK_REQUEST, self._on_unmask_request, rounds=RoundPolicy.CURRENT)
        registry.register(Kind.EVALUATE, self._on_evaluate, rounds=RoundPolicy.NOT_STALE)
        registry.register(Kind.FINISH, self._on_finish, rounds=RoundPolicy.ANY)
        self.dispatcher = Dispatcher(
            federation=self._fed,
            registry=registry,
            current_round=lambda: self.round,
            max_payload=config.max_payload,
            security=Security(credentials.verifier()) if credentials else None,
            metrics=self.metrics,
        )

    @property
    def admitted(self) -> bool:
        return self._admitted.is_set()

    async def run(self) -> None:
        """Subscribe, join, and serve until cancelled."""
        for spec in (topics.GLOBAL_MODEL, topics.EVALUATE, topics.FINISH):
            await self._bus.subscribe(spec.format(self._fed))
        await self._bus.subscribe(topics.INBOX.format(self._fed, self._id))
        self._bus.on_connect(self._on_connect)
        structlog.contextvars.bind_contextvars(agent_id=self._id, federation=self._fed)
        try:
            async with task_group() as tg:
                tg.create_task(self.dispatcher.run(self._bus), name="trainer-receive")
                tg.create_task(self._mark_ready(), name="trainer-ready")
                tg.create_task(self._join_loop(), name="trainer-join")
                tg.create_task(self._heartbeat(), name="trainer-heartbeat")
        finally:
            for task in self._work.values():
                task.cancel()
            await self._say_offline()

    # -- liveness -----------------------------------------------------------------------

    async def _send_status(self, state: Liveness) -> None:
        body = AgentStatus(
            state=state,
            detail=self.status[:1024],
            model_version=self.model.version if self.model else None,
        )
        await self._outbox.try_send(topics.STATUS, body, round=self.round, agent_id=self._id)

    async def _heartbeat(self) -> None:
        """``status: online`` (retained) once connected, then every ``heartbeat`` seconds."""
        while True:
            await self._bus.wait_connected()
            await self._send_status(Liveness.ONLINE)
            await asyncio.sleep(self._config.trainer.heartbeat)

    async def _say_offline(self) -> None:
        """A clean stop says ``offline`` itself (MQTT sends the will only on a lost
        connection); best effort, bounded."""
        try:
            async with asyncio.timeout(2.0):
                await self._send_status(Liveness.OFFLINE)
        except TimeoutError:
            log.warning("offline_status_not_sent")

    async def _mark_ready(self) -> None:
        await self._bus.wait_connected()
        self.ready.set()

    # -- joining ------------------------------------------------------------------------

    async def _on_connect(self, reconnect: bool) -> None:
        await self._send_status(Liveness.ONLINE)
        if reconnect:
            log.info("rejoining_after_reconnect")
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
            if self.status != "finished":
                self.status = "joining"

    async def _send_join(self) -> None:
        body = JoinRequest(
            agent_id=self._id,
            plugin=self._plugin.name,
            num_examples=self._plugin.num_examples(),
            capabilities=["fedavg"],
        )
        if await self._outbox.try_send(topics.JOIN, body, round=self.round) is not None:
            log.info("join_sent", num_examples=body.num_examples)

    async def _on_join_accepted(self, message: Message[JoinAccepted]) -> None:
        # A new admission may belong to a new run of the federation: follow its round.
        self.round = message.body.round
        seal_key = message.body.seal_key
        self._outbox.seal_to = X25519PublicKey.from_public_bytes(seal_key) if seal_key else None
        if self._outbox.signer is not None and seal_key is None:
            log.error(
                "no_sealing_key", aggregator=message.sender, consequence="updates will not be sent"
            )
        self.model = None
        self.status = "idle"
        self._admitted.set()
        log.info("join_accepted", aggregator=message.sender, round=self.round)

    async def _on_join_rejected(self, message: Message[JoinRejected]) -> None:
        self.status = "rejected"
        log.error("join_rejected", aggregator=message.sender, reason=message.body.reason)

    # -- the model ----------------------------------------------------------------------

    async def _on_model(self, message: Message[GlobalModel]) -> None:
        body = message.body
        if self.model is not None and body.version <= self.model.version:
            return
        # Hashing and copying a large model would stall the event loop: do it in a thread.
        weights = await asyncio.to_thread(_verified_copy, body)
        if weights is None:
            log.warning("model_rejected", reason="digest_mismatch", version=body.version)
            return
        if self.model is not None and body.version <= self.model.version:
            return  # a newer one arrived while this one was checked
        self.model = HeldModel(body.version, body.sha256, weights)
        self.round = max(self.round, message.round)
        log.info("model_accepted", version=body.version, sha256=body.sha256[:12])
        async with self._model_arrived:
            self._model_arrived.notify_all()
        path = self._config.state_dir / "global_model.npz"
        await asyncio.to_thread(write_weights, path, weights)

    async def _wait_for_model(self, version: int, sha256: str) -> HeldModel | None:
        """The model ``version``, waiting up to ``model_wait`` s; None if it did not come."""
        try:
            async with asyncio.timeout(self._config.trainer.model_wait), self._model_arrived:
                await self._model_arrived.wait_for(
                    lambda: self.model is not None and self.model.version >= version
                )
        except TimeoutError:
            log.warning("model_missing", version=version)
            return None
        model = self.model
        if model is None or model.version != version or model.sha256 != sha256:
            log.warning("model_superseded", wanted=version)
            return None
        return model

    # -- work ---------------------------------------------------------------------------

    def _start(self, kind: Kind, work: Any) -> None:
        """Run ``work`` as the one task of ``kind``, cancelling an older one (stale round)."""
        old = self._work.get(kind)
        if old is not None and not old.done():
            old.cancel()
            log.info("work_superseded", kind=str(kind))
        task = asyncio.create_task(work, name=f"trainer-{kind}")
        task.add_done_callback(_log_failure)
        self._work[kind] = task

    async def _on_fit_ins(self, message: Message[FitIns]) -> None:
        ins, round_ = message.body, message.round
        if ins.secagg is None and self._config.trainer.require_secure_aggregation:
            log.warning("fit_refused", reason="plaintext_round", round=round_)
            return
        self.round = round_
        if self._secure is not None:
            self._secure.cancel()
            self._secure = None
        deadline = time.monotonic() + ins.deadline
        secure = None
        if ins.secagg is not None:
            try:
                setup = parse_setup(ins.secagg, federation=self._fed, round_=round_)
                secure = SecureFit(agent_id=self._id, setup=setup)
            except REFUSED as exc:
                log.warning("fit_refused", reason="secagg_setup", error=str(exc), round=round_)
                return
            self._secure = secure
            # Keys go out at once: the key stages run while the plugin trains.
            await self._outbox.try_send(
                topics.SECAGG_ADVERTISE, secure.advertise(), round=round_, agent_id=self._id
            )
        self._start(Kind.FIT_INS, self._fit(round_, ins, secure, deadline))

    async def _fit(
        self, round_: int, ins: FitIns, secure: SecureFit | None, deadline: float
    ) -> None:
        with structlog.contextvars.bound_contextvars(round=round_):
            model = await self._wait_for_model(ins.model_version, ins.model_sha256)
            if model is None:
                return
            self.status = f"round {round_}: training"
            started = time.perf_counter()
            config = {**ins.config, "round": round_}
            try:
                result = await asyncio.to_thread(self._plugin.fit, model.weights, config)
            except FedbusError as exc:
                # The round goes on without us; we stay up and say what happened.
                log.exception("fit_failed", error=str(exc))
                self.status = f"idle (round {round_}: fit failed: {str(exc)[:200]})"
                return
            seconds = time.perf_counter() - started
            if secure is None:
                update: ModelUpdate | MaskedInput = ModelUpdate(
                    model_version=model.version,
                    num_examples=max(1, result.num_examples),
                    tensors=to_tensors(result.weights),
                    metrics=result.metrics,
                )
            else:
                self.status = f"round {round_}: masking"
                masked = await self._mask(secure, model, result, deadline)
                if masked is None:
                    self.status = "idle"
                    return
                update = masked
            self.status = "idle"
            size = await self._outbox.try_send(
                topics.UPDATE, update, round=round_, agent_id=self._id
            )
            if size is None:
                return
            log.info(
                "update_sent",
                num_examples=result.num_examples,
                seconds=round(seconds, 4),
                size=size,
                masked=secure is not None,
                **{k: v for k, v in result.metrics.items() if isinstance(v, int | float)},
            )

    async def _mask(
        self, secure: SecureFit, model: HeldModel, result: FitResult, deadline: float
    ) -> MaskedInput | None:
        """The trained model's delta, masked (None when the round went on without us)."""
        delta = flatten(result.weights) - flatten(model.weights)
        try:
            vector = await secure.mask(
                delta,
                weight=max(1, result.num_examples),
                wait=max(0.0, deadline - time.monotonic()),
            )
        except TimeoutError:
            log.warning("secagg_abandoned", reason="shares_missing")
            return None
        except REFUSED as exc:
            log.warning("secagg_abandoned", reason="bad_shares", error=str(exc))
            return None
        return MaskedInput(model_version=model.version, vector=to_tensor(vector))

    # -- SecAgg+ relays ---------------------------------------------------------------------

    def _secure_for(self, message: Message[Any]) -> SecureFit | None:
        secure = self._secure
        if secure is None or secure.round != message.round:
            log.warning("secagg_message_ignored", kind=str(message.kind), reason="no_secure_round")
            return None
        return secure

    async def _on_relay_keys(self, message: Message[RelayKeys]) -> None:
        secure = self._secure_for(message)
        if secure is None:
            return
        try:
            body = await secure.share(message.body)
        except REFUSED as exc:
            log.warning("secagg_refused", stage="share_keys", error=str(exc))
            return
        await self._outbox.try_send(
            topics.SECAGG_SHARE, body, round=message.round, agent_id=self._id
        )

    async def _on_relay_shares(self, message: Message[RelayShares]) -> None:
        secure = self._secure_for(message)
        if secure is not None:
            secure.deliver(message.body)

    async def _on_unmask_request(self, message: Message[UnmaskRequest]) -> None:
        secure = self._secure_for(message)
        if secure is None:
            return
        try:
            body = await secure.unmask(message.body)
        except REFUSED as exc:
            log.warning("secagg_refused", stage="unmask", error=str(exc))
            return
        self._secure = None
        await self._outbox.try_send(
            topics.SECAGG_UNMASK, body, round=message.round, agent_id=self._id
        )
        log.info(
            "unmask_sent", survivors=len(message.body.survivors), dropped=len(message.body.dropped)
        )

    async def _on_evaluate(self, message: Message[EvaluateIns]) -> None:
        if not self._admitted.is_set():
            return
        self.round = message.round
        self._start(Kind.EVALUATE, self._evaluate(message.round, message.body))

    async def _evaluate(self, round_: int, ins: EvaluateIns) -> None:
        with structlog.contextvars.bound_contextvars(round=round_):
            model = await self._wait_for_model(ins.model_version, ins.model_sha256)
            if model is None:
                return
            try:
                result = await asyncio.to_thread(self._plugin.evaluate, model.weights, ins.config)
            except FedbusError as exc:
                log.exception("evaluate_failed", error=str(exc))
                return
            res = EvaluateRes(
                model_version=model.version,
                loss=result.loss,
                num_examples=result.num_examples,
                metrics=result.metrics,
            )
            if (
                await self._outbox.try_send(topics.METRICS, res, round=round_, agent_id=self._id)
                is None
            ):
                return
            log.info("metrics_sent", loss=round(result.loss, 5), num_examples=result.num_examples)

    async def _on_finish(self, message: Message[Finish]) -> None:
        log.info(
            "federation_finished",
            reason=message.body.reason,
            final_version=message.body.final_version,
        )
        self.status = "finished"
        # Stay up, idle; join again (with backoff) so the next run's aggregator finds us.
        self._rejoin.set()


def _log_failure(task: asyncio.Task[None]) -> None:
    """Log a fit/evaluate task that died of a bug, instead of losing its exception."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("work_failed", task=task.get_name(), exc_info=exc)


def _verified_copy(model: GlobalModel) -> Weights | None:
    """Writable copies of the model's arrays, or None when its sha256 does not match."""
    if digest(model.tensors) != model.sha256:
        return None
    return [a.copy() for a in to_arrays(model.tensors)]
