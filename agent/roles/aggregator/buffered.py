"""Buffered asynchronous aggregation over the bus (FedBuff: Nguyen et al., "Federated
Learning with Buffered Asynchronous Aggregation", AISTATS 2022, Algorithm 1;
ARCHITECTURE.md §4 "Asynchronous mode"). ``[aggregator] mode = "async"``: at most
``concurrency`` agents train at once, each sent the newest version when free (``dispatch``);
every ``buffer_size`` updates (``buffer.Buffer``, weighted by staleness and, in the clear,
participation: ``participation``) make one new version through the strategy seam
(``robust_fit.guarded_step``), recorded as a round and broadcast (``buffer_round``).
Under SecAgg+ each full buffer is one SecAgg+ round (``CohortFit.run``) among the agents
that announced ``update_ready``; each weighs and masks its own update
(``agent.roles.trainer.async_fit``): the aggregator never holds one. A restarted
aggregator resumes after its last committed version; updates of fits it did not dispatch
are refused (``not_training``).
"""

from __future__ import annotations

import asyncio
import time

import structlog

from agent.async_settings import AsyncConfig
from agent.config import SecureAggregation, TrainingMode
from agent.errors import RefusedError
from agent.messages.bodies import ModelUpdate, RoundPhase, UpdateReady
from agent.messages.envelope import Message
from agent.messages.kinds import Kind
from agent.roles.aggregator.broadcast import send_each
from agent.roles.aggregator.buffer import Buffer, Entry
from agent.roles.aggregator.buffer_round import finish_version, fit_ins
from agent.roles.aggregator.fill_watch import FillWatch
from agent.roles.aggregator.holders import Holders
from agent.roles.aggregator.outcome import Outcome, RoundFailure
from agent.roles.aggregator.participation import weights_for
from agent.roles.aggregator.persistence import RunStore
from agent.roles.aggregator.plain_round import bounded
from agent.roles.aggregator.records import GlobalState, RoundRecord, RunSummary
from agent.roles.aggregator.robust_fit import guarded_step
from agent.roles.aggregator.round import InForce, RoundParts
from agent.roles.aggregator.schedule import (
    RunPlan,
    begin,
    checkpoint,
    end,
    live,
    wait_for_cohort,
)
from agent.roles.aggregator.training import OpenFits
from agent.runtime.handlers import ListenerRegistry, RoundPolicy
from agent.runtime.tasks import task_group

log = structlog.get_logger(__name__)

#: Seconds between the dispatcher's looks at free agents and expired fits.
POLL = 0.1


class Buffered:
    """The aggregator's async mode: the listeners for updates and ``update_ready``, the
    dispatcher and the version loop (``federate``, a ``schedule.Federate``)."""

    def __init__(self, parts: RoundParts, now: InForce) -> None:
        self._parts, self._now = parts, now
        self.settings: AsyncConfig = parts.schedule.async_
        self.secure = parts.schedule.secure_aggregation is SecureAggregation.SECAGG_PLUS
        #: agents training now (``training.OpenFits``)
        self.training = OpenFits()
        #: SecAgg+: agents holding an update for a buffer whose secure round has not ended
        self.holding = Holders()
        #: the recent model versions (a plain update's delta is against its base)
        self.history: dict[int, GlobalState] = {}
        self.buffer, self.participation = self._fresh(), weights_for(self.settings, self.secure)
        #: full buffers, oldest first, each the next version to make
        self.full: list[Buffer] = []
        #: the round this incarnation started after, and the buffers filled since: the open
        #: buffer's updates are applied to the model of round ``_start + _filled_count``
        self._start = self._filled_count = 0
        self._changed = asyncio.Event()
        self._last_version_at = time.perf_counter()
        self._settling = False  #: the newest version is out, being evaluated: fits go out

    def register(self, registry: ListenerRegistry) -> None:
        """The async listeners: ``update_ready``, and ``model_update`` of any round (an
        update's version, not its envelope's round, says what it trained from)."""
        registry.register(Kind.MODEL_UPDATE, self.on_update, rounds=RoundPolicy.ANY)
        registry.register(Kind.UPDATE_READY, self.on_ready, rounds=RoundPolicy.ANY)

    def _fresh(self) -> Buffer:
        like = None if self.secure else self._now.model.weights
        return Buffer(self.settings.buffer_size, like)

    # -- listeners ----------------------------------------------------------------------

    def _admit(self, sender: str, base_version: int, *, plain: bool) -> int:
        """The staleness τ of ``sender``'s update from ``base_version``; closes its fit.

        Raises:
            RefusedError: the reason it is not counted.
        """
        if plain == self.secure:
            reason = "plaintext_in_secure_round" if plain else "not_secure"
            raise RefusedError(reason, "the update does not match secure_aggregation")
        self.training.close(sender, base_version)
        self._changed.set()
        tau = self._start + self._filled_count - base_version
        if tau > self.settings.max_staleness:
            raise RefusedError("too_stale", f"τ = {tau} > {self.settings.max_staleness}")
        return tau

    async def on_update(self, message: Message[ModelUpdate]) -> None:
        """A plain update: bounded against its base version, folded with weight s(τ)."""
        sender, body = message.sender, message.body
        try:
            tau = self._admit(sender, body.model_version, plain=True)
            base = self._base(body.model_version)
            weights, n, _ = bounded(
                base.weights,
                body,
                declared=self._parts.admission.declared(sender),
                robust=self._parts.schedule.robust,
            )
        except RefusedError as exc:
            log.warning("update_rejected", agent=sender, reason=exc.reason, detail=str(exc))
            return
        s, omega = self.settings.weight(tau), self.participation.weigh(sender)
        entry = Entry(sender, body.model_version, tau, s, n, dict(body.metrics), omega)
        await asyncio.to_thread(self.buffer.add, entry, weights, base.weights)
        self._received(entry)

    def _base(self, version: int) -> GlobalState:
        """The model version ``version`` (``RefusedError`` ``unknown_base_version``: gone)."""
        if (base := self.history.get(version)) is None:
            raise RefusedError("unknown_base_version", "the version is no longer held")
        return base

    async def on_ready(self, message: Message[UpdateReady]) -> None:
        """SecAgg+: ``sender`` holds an update from ``base_version``; it joins the buffer."""
        sender, body = message.sender, message.body
        slot = self.training.get(sender)
        try:
            tau = self._admit(sender, body.base_version, plain=False)
        except RefusedError as exc:
            log.warning("update_rejected", agent=sender, reason=exc.reason, detail=str(exc))
            return
        n = min(body.num_examples, self._parts.schedule.secagg.max_weight)
        self.buffer.add(Entry(sender, body.base_version, tau, self.settings.weight(tau), n, {}))
        self.holding.add(sender, slot.admitted if slot is not None else None)
        self._received(self.buffer.entries[-1])

    def _received(self, entry: Entry) -> None:
        """``entry`` is in the open buffer; a full buffer queues for its version at once."""
        log.info(
            "update_buffered",
            agent=entry.agent_id,
            base_version=entry.base_version,
            staleness=entry.staleness,
            weight=round(entry.weight, 6),
            participation=round(entry.participation, 4),
            buffered=len(self.buffer.entries),
            buffer_size=self.buffer.size,
        )
        if self.buffer.full:
            self.full.append(self.buffer)
            self.buffer = self._fresh()
            self._filled_count += 1
        self._changed.set()

    # -- the dispatcher -----------------------------------------------------------------

    async def dispatch(self) -> list[str]:
        """Send the model in force to free live agents, up to ``concurrency`` training;
        returns the agents sent. Fits past their deadline, or of agents gone offline or
        revoked, are given up first. None while a plain buffer waits for its step (which
        takes milliseconds): a fit sent the old version would be stale for nothing; but not
        while the version before it is evaluated (a round trip: FedBuff never idles a client)."""
        parts, clock = self._parts, time.monotonic()
        if self.full and not self.secure and not self._settling:
            return []
        alive, admitted = set(live(parts)), parts.admission.agents
        for agent_id in self.training.give_up(now=clock, alive=alive, admitted=admitted):
            parts.liveness.missed(agent_id)
        room = self.settings.concurrency - len(self.training)
        busy = set(self.training) | set(self.holding)  # a plain update's agent is free again
        free = sorted(a for a in alive if a not in busy)
        chosen = sorted(parts.rng.sample(free, min(room, len(free)))) if room > 0 else []
        if chosen:
            version = self._now.model.version
            deadline = clock + parts.schedule.round_timeout
            self.training.start(chosen, version=version, deadline=deadline, admitted=admitted)
            self.history.setdefault(version, self._now.model)
            self.participation.sent(chosen)
            ins = fit_ins(parts.schedule, self._now.model, hold=self.secure)
            await send_each(parts.outbox, chosen, ins, round=self._now.round)
            log.info("fits_dispatched", agents=chosen, model_version=version)
        return chosen

    async def _dispatcher(self) -> None:
        while True:
            await self.dispatch()
            self._changed.clear()
            try:
                async with asyncio.timeout(POLL):
                    await self._changed.wait()
            except TimeoutError:
                pass

    async def _filled(self) -> None:
        """Until a buffer is full (``RunFailedError`` when it stops filling: ``FillWatch``)."""
        watch = FillWatch(self._parts.schedule.join_timeout, self._parts.schedule.round_timeout)
        while not self.full:
            watch.check(training=len(self.training), buffered=len(self.buffer.entries))
            await asyncio.sleep(POLL / 2)

    # -- the version loop ---------------------------------------------------------------

    async def federate(
        self, parts: RoundParts, now: InForce, store: RunStore, plan: RunPlan
    ) -> RunSummary:
        """Run (or resume) the run: ``rounds`` new versions (0: until cancelled), each
        committed as it is made, then ``finish`` (``schedule.end``).

        Raises:
            RoundError: fewer than ``min_fit_clients`` agents joined within ``join_timeout``.
            RunFailedError: the fleet vanished.
            OSError: the state directory cannot be written.
        """
        records = await begin(parts, now, store, plan)
        self.history = {now.model.version: now.model}
        self.buffer, self.full = self._fresh(), []
        self._start, self._filled_count = now.round, 0
        self._last_version_at = time.perf_counter()  # version 1's time starts with training
        rounds = parts.schedule.rounds
        async with task_group() as tg:
            dispatcher = tg.create_task(self._dispatcher(), name="aggregator-dispatch")
            try:
                while rounds == 0 or now.round < rounds:
                    await wait_for_cohort(parts, records)
                    parts.board.enter(
                        RoundPhase.TRAINING, f"buffering {self.buffer.size} updates (async)"
                    )
                    parts.board.changed()
                    await self._filled()
                    r = now.round + 1
                    with structlog.contextvars.bound_contextvars(round=r):
                        await asyncio.to_thread(store.open_round, r, stage="fit")
                        record = await self.version(r)
                        await store.commit(
                            checkpoint(parts, now, plan),
                            now.model,
                            record=record,
                            strategy=parts.fit.strategy.state(),
                        )
                        parts.board.finished_round(record)
                    records.append(record)
                    await store.save_run(records)
                    if parts.observer is not None:
                        parts.observer.round_finished(record)
            finally:
                dispatcher.cancel()
        return await end(parts, now, records, None)

    async def version(self, r: int) -> RoundRecord:
        """Make version ``r`` from the oldest full buffer (a new one took the next updates
        as soon as it filled), publish it and evaluate it (``finish_version``); the record."""
        parts, now = self._parts, self._now
        started = self._last_version_at
        buffer = self.full.pop(0)
        before, now.round = now.model, r
        cohort = list(buffer.agents)
        if self.secure:
            statuses, admitted = parts.liveness.agents, parts.admission.agents
            absent = self.holding.lost(cohort, statuses=statuses, admitted=admitted)
            buffer.restale(before.version, self.settings.weight)
            parts.board.enter(RoundPhase.TRAINING, f"SecAgg+ round of {len(cohort)} agents")
            try:
                outcome = await parts.fit.run(r, cohort, before, absent=absent)
            finally:
                self.holding.release(buffer.agents)
            for agent_id in parts.fit.late:
                parts.liveness.missed(agent_id)
        else:
            outcome = await self._step(buffer, before)
        waits = bool(self.full)  # a full buffer: this version is not evaluated
        try:
            record = await finish_version(
                parts, now, r, buffer, before, outcome, started, self._new_model, waits
            )
        finally:
            self._settling = False
        self._last_version_at = time.perf_counter()
        return record

    def _new_model(self, model: GlobalState) -> None:
        """``model`` is in force: held for the deltas, sent from now on."""
        self.history[model.version] = model
        self._forget_old()
        self._settling = True
        self._changed.set()

    async def _step(self, buffer: Buffer, before: GlobalState) -> Outcome:
        """The strategy's step on the buffer's Δ, and the new version in force."""
        parts, update = self._parts, buffer.result()
        weights = await guarded_step(
            parts.fit.strategy, before.weights, update, parts.schedule.robust
        )
        if weights is None:
            return Outcome.failed(RoundFailure.MODEL_REJECTED)
        weights = buffer.carried.apply(weights, update.survivors)  # integer arrays: median
        self._now.model = await asyncio.to_thread(GlobalState.of, self._now.round, weights)
        self.history[self._now.model.version] = self._now.model  # the next buffer's base
        return Outcome.of(weights, update, None)

    def _forget_old(self) -> None:
        """Keep the versions an update may still be trained from (``max_staleness``)."""
        keep = self._now.model.version - self.settings.max_staleness
        needed = self.training.versions()
        for v in [v for v in self.history if v < keep and v not in needed]:
            del self.history[v]


def buffered(parts: RoundParts, now: InForce) -> Buffered | None:
    """The async mode's parts when ``[aggregator] mode = "async"``, else None."""
    return Buffered(parts, now) if parts.schedule.mode is TrainingMode.ASYNC else None
