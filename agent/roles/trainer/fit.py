"""The trainer's fit path: ``fit_ins`` → train → the update, in the clear or masked (SecAgg+).

A plain round sends the trained weights (``model_update``). A secure round (``fit_ins.secagg``
set) makes the round's ``SecureFit``, which advertises keys at once and answers the stage
relays while the plugin trains; the update is then the model delta, masked (``masked_input``).
``trainer.require_secure_aggregation`` refuses rounds that would send weights in the clear.
Training runs in a worker thread (``asyncio.to_thread``) so the event loop keeps serving the bus.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog

from agent.config import AgentConfig
from agent.errors import FedbusError
from agent.messages import topics
from agent.messages.bodies import FitIns, MaskedInput, ModelUpdate
from agent.messages.envelope import Message
from agent.messages.kinds import Kind
from agent.messages.tensors import as_tensor
from agent.plugin.api import FitResult
from agent.plugin.loader import CheckedPlugin
from agent.privacy.local import clip_result
from agent.roles.trainer.async_fit import HeldUpdate
from agent.roles.trainer.carried import beside
from agent.roles.trainer.model import HeldModel, ModelStore
from agent.roles.trainer.status import Progress, TrainerState
from agent.runtime.outbox import Outbox
from agent.runtime.tasks import Worker

if TYPE_CHECKING:  # SecAgg+ is imported by the first secure round (a light device, issue 15)
    from agent.roles.trainer.secure_fit import SecureFit

log = structlog.get_logger(__name__)


class FitPath:
    """Answers ``fit_ins`` (one fit at a time: a newer round's supersedes an older one's) and
    routes the SecAgg+ stage messages to the current round's ``SecureFit``."""

    def __init__(
        self,
        *,
        config: AgentConfig,
        plugin: CheckedPlugin,
        outbox: Outbox,
        models: ModelStore,
        progress: Progress,
        work: Worker,
    ) -> None:
        self._config = config
        self._plugin = plugin
        self._outbox = outbox
        self._models = models
        self._progress = progress
        self._work = work
        self._id = config.agent_id
        #: the SecAgg+ side of the newest secure round (None: none, or a plain round since)
        self._secure: SecureFit | None = None
        #: async SecAgg+: the update trained and held for its buffer's secure round
        self.held = HeldUpdate(outbox=outbox, agent_id=config.agent_id)
        #: awaited after a failed fit (the role sends its status: the aggregator sees this
        #: agent alive, and why it did not answer, so it is sampled again next round)
        self.on_failed: Callable[[], Awaitable[None]] | None = None
        #: the aggregator's timestamp of this life's first admission (``join_accepted``): a
        #: SecAgg+ fit_ins sent before it (an inbox resend after a restart) was for an
        #: earlier life, whose keys the round relays; joining with fresh keys would make
        #: every neighbour's shares fail to authenticate (``sent_before_admission``)
        self.admitted_at: float | None = None

    async def on_fit_ins(self, message: Message[FitIns]) -> None:
        """``fit_ins``: start training for ``message.round``; a secure round advertises its
        keys first. A round we must not join is logged as ``fit_refused``."""
        ins, round_ = message.body, message.round
        plaintext = ins.secagg is None and not ins.hold  # a held update is masked later
        if plaintext and self._config.trainer.require_secure_aggregation:
            log.warning("fit_refused", reason="plaintext_round", round=round_)
            return
        if ins.secagg is not None and message.envelope.timestamp < (self.admitted_at or math.inf):
            log.warning("fit_refused", reason="sent_before_admission", round=round_)
            return
        self._progress.round = round_
        if self._secure is not None:
            self._secure.close()
            self._secure = None
        deadline = time.monotonic() + ins.deadline
        secure = None
        if ins.secagg is not None:
            from agent.roles.trainer.secure_fit import REFUSED, SecureFit

            try:
                secure = SecureFit.announced(
                    ins.secagg,
                    federation=self._config.federation,
                    round_=round_,
                    outbox=self._outbox,
                    agent_id=self._id,
                )
            except REFUSED as exc:
                log.warning("fit_refused", reason="secagg_setup", error=str(exc), round=round_)
                return
            self._secure = secure
            # Keys go out at once: the key stages run while the plugin trains.
            await secure.advertise()
        self._work.start(Kind.FIT_INS, partial(self._fit, round_, ins, secure, deadline))

    async def on_secagg(self, message: Message[Any]) -> None:
        """``relay_keys``, ``relay_shares``, ``unmask_request``: to this round's SecureFit
        (ignored, as ``secagg_message_ignored``, when there is none open for the round; the
        ``unmask_request`` broadcast silently: every agent outside the round reads it)."""
        secure = self._secure
        if secure is None or secure.closed or secure.round != message.round:
            if message.kind is Kind.UNMASK_REQUEST:
                return  # a broadcast to the round's cohort, which we are not (or no more) in
            log.warning("secagg_message_ignored", kind=str(message.kind), reason="no_secure_round")
            return
        await secure.handle(message)

    async def _fit(
        self, round_: int, ins: FitIns, secure: SecureFit | None, deadline: float
    ) -> None:
        with structlog.contextvars.bound_contextvars(round=round_):
            # async SecAgg+: the buffer's round masks the update trained before (async_fit)
            trained = self.held.take(ins) if secure is not None else None
            seconds = 0.0
            if trained is None:
                started = time.perf_counter()
                trained = await self._train(round_, ins)
                if trained is None:
                    return
                seconds = time.perf_counter() - started
                if ins.hold:
                    self._progress.enter(TrainerState.IDLE)
                    await self.held.keep(round_, *trained)
                    return
            model, result = trained
            if secure is None:
                update: ModelUpdate | MaskedInput = ModelUpdate(
                    model_version=model.version,
                    num_examples=max(1, result.num_examples),
                    # the plugin's arrays travel as they are (no copy): nothing changes
                    # them until this send returns (one fit at a time)
                    tensors=[as_tensor(w) for w in result.weights],
                    metrics=result.metrics,
                )
            else:
                self._progress.enter(TrainerState.MASKING, round_=round_)
                masked = await secure.masked_input(
                    base=model, result=result, deadline=deadline, config=ins.config
                )
                if masked is None:
                    self._progress.enter(TrainerState.IDLE)
                    return
                reveal = self._config.trainer.reveal_integer_arrays
                update = beside(masked, result.weights, reveal=reveal)
            self._progress.enter(TrainerState.IDLE)
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

    async def _train(self, round_: int, ins: FitIns) -> tuple[HeldModel, FitResult] | None:
        """The plugin's fit on the model ``ins`` names (DP: Δ clipped to C); None when the
        model did not come or the fit failed (logged, and the role says so)."""
        model = await self._models.wait_for(ins.model_version, ins.model_sha256)
        if model is None:
            return None
        self._progress.enter(TrainerState.TRAINING, round_=round_)
        config = {**ins.config, "round": round_}
        try:
            result = await asyncio.to_thread(self._plugin.fit, model.weights, config)
        except FedbusError as exc:
            # The round goes on without us; we stay up and say what happened.
            log.exception("fit_failed", error=str(exc))
            self._progress.enter(TrainerState.FIT_FAILED, round_=round_, error=str(exc))
            if self.on_failed is not None:
                await self.on_failed()
            return None
        return model, clip_result(result, model.weights, ins.config)
