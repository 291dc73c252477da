"""The fit part of a round: ask the cohort to train, collect what comes back, aggregate.

In the clear (``PlainRound``): every member's ``model_update`` is checked against the model in
force and the survivors' weighted mean delta is computed here (``mean_update``).

With ``secure_aggregation = "secagg+"`` (``SecureRound``, Bell et al. 2020, "Secure
Single-Server Aggregation with (Poly)Logarithmic Overhead"): the aggregator learns only the
survivors' weighted sum of model deltas, hence their weighted mean. An aborted secure round
keeps the model in force.

Both paths end in one ``AggregatedUpdate`` (with the cohort's fit metrics; under SecAgg+ the
secure metrics) that DP releases (``private_update``: noise, the accountant) and the strategy
(``agent.strategy``: FedAvg by default, or FedAvgM, FedAdagrad, FedAdam, FedYogi) turns into
the next model, identically.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Collection, Sequence
from functools import partial
from typing import Any

import msgspec
import structlog

from agent.config import AggregatorConfig, SecureAggregation, TrainingMode
from agent.errors import ConfigError, SecAggAbortError
from agent.messages.bodies import AdvertiseKeys, FitIns, MaskedInput, ModelUpdate, ShareKeys, Unmask
from agent.messages.envelope import Message
from agent.privacy.config import PrivacyConfig
from agent.privacy.engine import PrivacyEngine, RingPlan
from agent.robust.settings import Aggregation
from agent.roles.aggregator import private_update, secure_carried
from agent.roles.aggregator.broadcast import send_each
from agent.roles.aggregator.fold import RunningMean
from agent.roles.aggregator.outcome import Outcome, RoundFailure
from agent.roles.aggregator.plain_round import FoldStream, PlainRound, Transfer
from agent.roles.aggregator.records import GlobalState
from agent.roles.aggregator.robust_fit import check_secure, guarded_step, robust_update
from agent.roles.aggregator.secure_round import SecureRound, setup_body
from agent.runtime.metrics import Metrics
from agent.runtime.outbox import Outbox
from agent.secagg.keys import RoundContext
from agent.secagg.state import Setup
from agent.strategy.base import Strategy
from agent.strategy.carried import CarriedValues
from agent.strategy.update import AggregatedUpdate

log = structlog.get_logger(__name__)


class CohortFit:
    """Runs the fit part of each round, one at a time; the listeners hand it the cohort's
    updates and SecAgg+ messages while a round is open.

    Args:
        outbox: sends ``fit_ins`` (and, through ``SecureRound``, the relays).
        schedule: the ``[aggregator]`` table (timeouts, fit config, SecAgg+ settings).
        federation: the federation id (binds SecAgg+ keys to it).
        strategy: turns each round's ``AggregatedUpdate`` into the next model (both paths).
        alive: liveness (an offline member is not waited for).
        metrics: observes stage durations.
        declared: an agent's num_examples declared at join (0: unknown), for the bounds.
        privacy: differential privacy of each round (``agent.privacy``; default: off).
        population: the number of admitted agents (the accountant's sampling rate).
    """

    def __init__(
        self,
        *,
        outbox: Outbox,
        schedule: AggregatorConfig,
        federation: str,
        strategy: Strategy,
        alive: Callable[[str], bool],
        metrics: Metrics,
        declared: Callable[[str], int] = lambda _: 0,
        privacy: PrivacyEngine | None = None,
        population: Callable[[], int] = lambda: 0,
    ) -> None:
        self._outbox = outbox
        self._declared = declared
        self._schedule = schedule
        self._fed = federation
        self._strategy = strategy
        self._alive = alive
        self._metrics = metrics
        self.privacy = privacy or PrivacyEngine(
            PrivacyConfig(), rounds=1, sampling_rate=1.0, expected_cohort=1
        )
        self._population = population
        #: async SecAgg+ (FedBuff): each agent weighs its held update by s(τ) (fit config)
        self._async = schedule.mode is TrainingMode.ASYNC
        #: the cohort of the round in progress (or the last one)
        self.cohort: frozenset[str] = frozenset()
        self._absent: frozenset[str] = frozenset()  #: ``run``'s ``absent``
        #: members of the last round waited for until a deadline passed without an answer
        self.late: frozenset[str] = frozenset()
        self._plain: PlainRound | None = None
        self._secure: SecureRound | None = None
        #: the open SecAgg+ round's integer arrays, from the masked inputs it counted
        self._carried = CarriedValues([])
        #: called with (round, stage) as each SecAgg+ stage closes (persisted, for a restart)
        self.on_stage: Callable[[int, str], None] | None = None

    async def run(
        self,
        r: int,
        cohort: Sequence[str],
        before: GlobalState,
        *,
        quorum: int | None = None,
        absent: Collection[str] = (),
    ) -> Outcome:
        """Ask ``cohort`` to train from ``before`` in round ``r``; the outcome once every
        member (or ``quorum``: over-selection) delivered, or ``round_timeout`` passed.
        SecAgg+: no stage waits for the members in ``absent`` (known to have lost their
        held update: ``holders.Holders.lost``); they are dropouts unless they answer."""
        self.cohort, self._absent = frozenset(cohort), frozenset(absent)
        self.late = frozenset()
        if not cohort:
            return Outcome.failed(RoundFailure.NO_COHORT)
        if self._schedule.secure_aggregation is SecureAggregation.SECAGG_PLUS:
            return await self._secure_fit(r, cohort, before, quorum)
        return await self._plain_fit(r, cohort, before, quorum)

    @property
    def strategy(self) -> Strategy:
        """The strategy (its ``state()`` is persisted with each round)."""
        return self._strategy

    # -- listeners' entry points --------------------------------------------------------

    async def on_update(self, message: Message[ModelUpdate]) -> None:
        """The ``model_update`` listener: for the open plain round, refused otherwise."""
        sender, body = message.sender, message.body
        if self._secure is not None:
            log.warning("update_rejected", agent=sender, reason="plaintext_in_secure_round")
        elif self._plain is None:
            log.warning("update_rejected", agent=sender, reason="no_round_open")
        else:
            await self._plain.receive(sender, body, message.envelope.message_id)

    def stream_update(self, transfer: Transfer) -> FoldStream | None:
        """The ``model_update`` stream hook: the open plain round's (``PlainRound.stream``)."""
        return None if self._plain is None else self._plain.stream(transfer)

    async def on_secagg(self, message: Message[Any]) -> None:
        """The listener of the SecAgg+ kinds (advertise_keys, share_keys, masked_input,
        unmask): for the open secure round, ignored otherwise."""
        secure, sender, body = self._secure, message.sender, message.body
        if secure is None:
            log.warning(
                "secagg_message_ignored",
                agent=sender,
                kind=str(message.kind),
                reason="no_secure_round",
            )
        elif isinstance(body, AdvertiseKeys):
            secure.on_advertise_keys(sender, body)
        elif isinstance(body, ShareKeys):
            secure.on_share_keys(sender, body)
        elif isinstance(body, MaskedInput):
            secure_carried.receive(secure, self._carried, sender, body)
        elif isinstance(body, Unmask):
            secure.on_unmask(sender, body)

    def on_offline(self, agent_id: str) -> None:
        """A cohort member said it went offline: stop waiting for it."""
        if agent_id not in self.cohort:
            return
        if self._secure is not None:
            self._secure.on_offline(agent_id)
        elif self._plain is not None:
            self._plain.check_complete()

    def on_revoked(self, agent_id: str) -> None:
        """A cohort member was revoked: out of the round at once (a plain update it sent
        is discarded; under SecAgg+ it is not waited for and its masks are removed as a
        dropout's, unless its masked input is already in)."""
        if agent_id not in self.cohort:
            return
        if self._plain is not None:
            self._plain.results.pop(agent_id, None)
        self.on_offline(agent_id)

    # -- the two kinds of fit -----------------------------------------------------------

    def _fit_ins(self, before: GlobalState, **secagg: Any) -> FitIns:
        deadline = self._schedule.round_timeout
        if self._async and secagg:  # held updates: the agent waits out the key stages too
            deadline += 3 * self._schedule.secagg.stage_timeout
        return FitIns(
            model_version=before.version,
            model_sha256=before.sha256,
            deadline=deadline,
            config={
                **self._schedule.fit_config,
                **self._schedule.strategy.fit_config(),
                **self.privacy.fit_config(),
                **(self._schedule.async_.fit_config() if self._async else {}),
            },
            **secagg,
        )

    async def _plain_fit(
        self, r: int, cohort: Sequence[str], before: GlobalState, quorum: int | None
    ) -> Outcome:
        """Updates in the clear: every member (or ``quorum``) or the deadline; the strategy."""
        started = time.monotonic()
        robust = self._schedule.robust
        # Streaming FedAvg (fold.py, fold_stream.py) unless DP or a robust rule needs it all
        streaming = robust.aggregation is Aggregation.MEAN and not self.privacy.on
        self._plain = plain = PlainRound(
            cohort=frozenset(cohort),
            model=before,
            alive=self._alive,
            robust=robust,
            declared=self._declared,
            quorum=quorum,
            fold=RunningMean(before.weights, robust=robust) if streaming else None,
        )
        fold = plain.fold
        try:
            await send_each(self._outbox, cohort, self._fit_ins(before), round=r)
            results = await plain.wait(self._schedule.round_timeout)
        except BaseException:  # cancelled or failed: the spool goes now, not at GC
            if fold is not None:
                fold.close()
            raise
        finally:
            self._plain = None
            self.late = plain.late
        if fold is not None and not results:
            fold.close()  # its spool; with results, fold.result() closes it
        self._metrics.stage_seconds.labels("fit").observe(time.monotonic() - started)
        if not results:
            return Outcome.failed(RoundFailure.NO_UPDATE)
        if fold is not None:  # streaming: the updates are already summed
            update: AggregatedUpdate | None = fold.result(results)
        else:
            update = await asyncio.to_thread(
                robust_update,
                before.weights,
                results,
                self._schedule.robust,
                partial(private_update.plain_update, self.privacy),
            )
        if update is None:
            return Outcome.failed(RoundFailure.NO_UPDATE)
        return await self._step(before, update, len(cohort), carried=plain.carried)

    async def _step(
        self,
        before: GlobalState,
        update: AggregatedUpdate,
        cohort_size: int,
        plan: RingPlan | None = None,
        carried: CarriedValues | None = None,
    ) -> Outcome:
        """The strategy's step from the model in force: the one seam of both paths (after
        DP's noise and charge, ``private_update.release``). The new model passes the guard
        (``agent.robust.guard``) or is dropped, the strategy's state as before the step.
        ``carried``: the survivors' integer arrays (in the clear from their updates, under
        SecAgg+ from beside their masked inputs), whose median the new model takes
        (``agent.strategy.carried``)."""
        update, spent = await asyncio.to_thread(  # the accountant's RDP sums take ~0.1 s
            private_update.release,
            self.privacy,
            update,
            cohort_size=cohort_size,
            population=self._population(),
            plan=plan,
        )
        weights = await guarded_step(self._strategy, before.weights, update, self._schedule.robust)
        if weights is None:
            return Outcome.failed(RoundFailure.MODEL_REJECTED)
        if carried is not None:
            weights = carried.apply(weights, update.survivors)
        return Outcome.of(weights, update, spent)

    async def _secure_fit(
        self, r: int, cohort: Sequence[str], before: GlobalState, quorum: int | None
    ) -> Outcome:
        """SecAgg+: the aggregator learns only the survivors' weighted sum of model deltas;
        their weighted mean goes through the strategy."""
        settings = self._schedule.secagg
        try:
            layout = private_update.secure_setup(
                self.privacy, settings, len(cohort), before.weights
            )
        except ConfigError as exc:
            log.error("secagg_not_possible", error=str(exc))  # noqa: TRY400 - expected, no traceback
            return Outcome.failed(RoundFailure.SECAGG_PARAMETERS)
        setup = Setup(
            RoundContext(self._fed, r),
            layout.plan.params,
            tuple(sorted(cohort)),
            os.urandom(32),
            layout.length,
        )
        params = setup.params
        self._carried = carried = CarriedValues(before.weights)
        self._secure = secure = SecureRound(
            outbox=self._outbox,
            setup=setup,
            stage_timeout=settings.stage_timeout,
            # async: the inputs are the agents' held updates, trained before the round
            # (a deadline from the round's start would leave no time after slow key stages)
            input_deadline=None if self._async else time.monotonic() + self._schedule.round_timeout,
            model_version=before.version,
            metrics=self._metrics,
            quorum=quorum,
            on_stage=None if self.on_stage is None else partial(self.on_stage, r),
        )
        for agent_id in self._absent:
            secure.on_offline(agent_id)
        body = msgspec.structs.replace(
            setup_body(setup, stage_timeout=settings.stage_timeout, layout=layout),
            norm_bound=self._schedule.robust.max_update_norm,
        )
        ins = self._fit_ins(before, secagg=body)
        log.info(
            "secagg_round",
            neighbours=params.num_neighbours,
            threshold=params.threshold,
            bits=params.quantization_bits,
            ring_bits=params.ring_bits,
        )
        try:
            await send_each(self._outbox, cohort, ins, round=r)
            aggregate = await self._secure.run()
            check_secure(
                aggregate,
                params,
                self._schedule.robust,
                model_size=layout.model_size,
                noisy=layout.plan.noise_stddev > 0,
            )
        except SecAggAbortError as exc:
            log.error("secagg_aborted", reason=exc.reason, error=str(exc))  # noqa: TRY400
            return Outcome.failed(RoundFailure.SECAGG_ABORTED)
        finally:
            self._secure = None
            self.late = frozenset(secure.late)
        update = private_update.secure_update(aggregate, before.weights, layout)
        return await self._step(before, update, len(cohort), layout.plan, carried=carried)
