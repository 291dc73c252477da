"""One run: (resume or) commit the initial model, wait for agents, run the rounds (each
committed as it ends, ``persistence``), then finish.

Control flow is honest: a round whose cohort cannot be filled (fewer than
``min_fit_clients`` live, unrevoked agents) waits for them, up to ``join_timeout`` and logged
every few seconds, instead of skipping rounds; a run that trained nothing, or ended because
the fleet vanished, raises ``RunFailedError`` (the process exits non-zero and says why).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from agent.errors import RoundError
from agent.messages import topics
from agent.messages.bodies import Finish, Liveness, RoundPhase
from agent.roles.aggregator.broadcast import publish_model, recorded
from agent.roles.aggregator.outcome import RoundFailure
from agent.roles.aggregator.persistence import Checkpoint, RunStore, rng_state, rng_tuple
from agent.roles.aggregator.private_update import budget_allows
from agent.roles.aggregator.records import RoundRecord, RunSummary
from agent.roles.aggregator.resume import Resumed
from agent.roles.aggregator.round import InForce, RoundParts, run_round
from agent.roles.aggregator.runs import RunOutcome, finish_run, record_incarnation

log = structlog.get_logger(__name__)

#: Seconds between ``round_waiting`` lines while a cohort cannot be filled.
WAIT_LOG_EVERY = 5.0
#: Seconds between liveness checks while waiting.
WAIT_POLL = 0.2


async def _wait_for_bus(parts: RoundParts) -> None:
    """A round started while the broker is down would be spent on nothing: wait for it."""
    if parts.connected is None:
        return
    try:
        await parts.connected(0.1)
    except TimeoutError:  # BusTimeoutError
        log.warning("waiting_for_bus", reason="no broker session; the round waits")
        await parts.connected(None)
        log.info("bus_back")


class RunFailedError(RoundError):
    """The run did not do its job (trained nothing, or the fleet vanished)."""


@dataclass(frozen=True, slots=True)
class RunPlan:
    """Which run this is and where it resumes (``resumed`` None: a fresh run)."""

    run_id: str
    incarnation: str
    resumed: Resumed | None = None


def restore(parts: RoundParts, now: InForce, resumed: Resumed) -> None:
    """Put the aggregator where the run's newest committed round left it."""
    ckpt = resumed.checkpoint
    now.round, now.model = ckpt.round, resumed.model
    parts.rng.setstate(rng_tuple(ckpt.rng_state))
    if resumed.strategy:
        parts.fit.strategy.load_state(resumed.strategy)
    released = [rec.privacy for rec in resumed.records if rec.privacy is not None]
    if released:  # DP: the budget goes on from what the committed rounds spent
        parts.fit.privacy.restore(released)
    log.info(
        "run_resumed",
        after_round=ckpt.round,
        model_version=now.model.version,
        expecting=len(ckpt.admitted),
        aborted=[a.get("round") for a in resumed.aborted],
    )


def checkpoint(parts: RoundParts, now: InForce, plan: RunPlan) -> Checkpoint:
    admitted = {a: rec.num_examples for a, rec in parts.admission.agents.items()}
    return Checkpoint(
        run_id=plan.run_id,
        round=now.round,
        model_version=now.model.version,
        model_sha256=now.model.sha256,
        rng_state=rng_state(parts.rng.getstate()),
        admitted=admitted,
        incarnation=plan.incarnation,
        time=time.time(),
    )


async def federate(parts: RoundParts, now: InForce, store: RunStore, plan: RunPlan) -> RunSummary:
    """Run (or resume) ``plan``'s run to its end: ``rounds`` rounds, or until cancelled when
    ``rounds = 0``; then close admission and send ``finish``. Returns every round's record and
    the final model's version and digest.

    Raises:
        RoundError: fewer than ``min_fit_clients`` agents joined within ``join_timeout``.
        RunFailedError: no cohort could be filled within ``join_timeout`` (a run that
            trained nothing returns: ``RunSummary.failure`` says so, the caller decides).
        OSError: the state directory cannot be written.
    """
    schedule, board = parts.schedule, parts.board
    records = await begin(parts, now, store, plan)
    stopped: str | None = None
    r = now.round
    while schedule.rounds == 0 or r < schedule.rounds:
        r += 1
        privacy = parts.fit.privacy
        allowed, projected = await asyncio.to_thread(
            budget_allows, privacy, schedule, len(parts.admission.agents)
        )
        if not allowed:
            stopped = str(RoundFailure.PRIVACY_BUDGET)
            log.warning(
                "privacy_budget_reached",
                round=r,
                epsilon=privacy.epsilon,
                epsilon_if_run=projected,
                target_epsilon=schedule.privacy.target_epsilon,
                detail=f"stopping before round {r}: it would spend ε = {projected:.3f} > "
                f"target {schedule.privacy.target_epsilon}",
            )
            break
        with structlog.contextvars.bound_contextvars(round=r):
            await _wait_for_bus(parts)
            await wait_for_cohort(parts, records)
            await asyncio.to_thread(store.open_round, r, stage="fit")
            record = await run_round(parts, now, r)
            await store.commit(
                checkpoint(parts, now, plan),
                now.model,
                record=record,
                strategy=parts.fit.strategy.state(),
            )
            log.info(
                "round_finished",
                accuracy=record.accuracy,
                loss=record.loss,
                seconds=round(record.seconds, 3),
                survivors=len(record.survivors),
            )
            board.finished_round(record)
        records.append(record)
        await store.save_run(records)
        if parts.observer is not None:
            parts.observer.round_finished(record)
    return await end(parts, now, records, stopped)


async def begin(
    parts: RoundParts, now: InForce, store: RunStore, plan: RunPlan
) -> list[RoundRecord]:
    """The start of a run, whatever its mode: restore a resumed run (or commit round 0),
    record the starting model in the ledger, wait for the agents (or their rejoins) and
    publish the model. Returns the records of the rounds already committed.

    Raises:
        RoundError: fewer than ``min_fit_clients`` agents joined within ``join_timeout``.
        OSError: the state directory cannot be written.
    """
    schedule, board, admission = parts.schedule, parts.board, parts.admission
    records: list[RoundRecord] = []
    wanted = schedule.min_available_clients
    if plan.resumed is not None:
        restore(parts, now, plan.resumed)
        records = list(plan.resumed.records)
        wanted = len(plan.resumed.checkpoint.admitted)
    else:
        await store.commit(checkpoint(parts, now, plan), now.model)
    # the ledger records the model this incarnation starts from (round 0, or the resumed one)
    now.model = await recorded(parts.ledger, now.model, round=now.round)
    board.enter(RoundPhase.WAITING_FOR_AGENTS, f"waiting for {wanted} agents")
    board.changed()  # announce this incarnation at once: admitted trainers rejoin
    if plan.resumed is None:
        await admission.wait(seconds=schedule.join_timeout, at_least=schedule.min_fit_clients)
    else:
        await wait_for_rejoins(parts, set(plan.resumed.checkpoint.admitted))
    await publish_model(parts.outbox, now.model, round=now.round)
    return records


async def end(
    parts: RoundParts, now: InForce, records: list[RoundRecord], stopped: str | None
) -> RunSummary:
    """The end of a run, whatever its mode: close admission, send ``finish`` (``stopped``:
    why it stopped early, None: completed) and return the run's summary."""
    board, admission = parts.board, parts.admission
    admission.close()  # joins from now on belong to the next run
    state = now.model
    await parts.outbox.try_send(
        topics.FINISH,
        Finish(
            reason=stopped or "completed", final_version=state.version, model_sha256=state.sha256
        ),
        round=now.round,
    )
    board.enter(
        RoundPhase.FINISHED,
        f"finished after {len(records)} rounds" + (f" ({stopped})" if stopped else ""),
    )
    log.info(
        "federation_finished", rounds=len(records), final_version=state.version, stopped=stopped
    )
    return RunSummary(records, state.version, state.sha256, stopped)


#: A run's schedule: ``federate`` (synchronous rounds) or another mode's (``buffered``).
Federate = Callable[[RoundParts, InForce, RunStore, RunPlan], Awaitable[RunSummary]]


async def run_recorded(
    parts: RoundParts,
    now: InForce,
    store: RunStore,
    plan: RunPlan,
    run_dir: Path,
    loop: Federate | None = None,
) -> RunSummary:
    """``loop`` (default ``federate``: synchronous rounds), with the run's ``incarnations/`` entry
    first and its ``result.json`` once it is over (a cancelled run has none: the next
    aggregator resumes it).

    Raises:
        as ``federate``.
    """
    after = 0 if plan.resumed is None else plan.resumed.checkpoint.round
    await asyncio.to_thread(record_incarnation, run_dir, plan.incarnation, resumed_after=after)
    try:
        summary = await (loop or federate)(parts, now, store, plan)
    except RunFailedError as exc:
        parts.board.enter(RoundPhase.FINISHED, f"failed: {exc}")
        parts.board.changed()
        reason, rounds = str(exc), now.round
        await asyncio.to_thread(
            finish_run, run_dir, RunOutcome.FAILED, reason=reason, rounds=rounds
        )
        raise
    failure = summary.failure
    outcome = RunOutcome.COMPLETED if failure is None else RunOutcome.FAILED
    reason, rounds = failure or "completed", len(summary.rounds)
    await asyncio.to_thread(finish_run, run_dir, outcome, reason=reason, rounds=rounds)
    if failure is not None:
        log.error("run_failed", run_id=plan.run_id, reason=failure)
    return summary


async def wait_for_rejoins(parts: RoundParts, expected: set[str]) -> None:
    """A resumed run waits for the agents admitted before the restart to join again, except
    those known offline (their will, or a clean stop) or revoked, up to ``join_timeout``;
    then it goes on with at least ``min_fit_clients``.

    Raises:
        RoundError: fewer than ``min_fit_clients`` rejoined within ``join_timeout``.
    """
    schedule, admission = parts.schedule, parts.admission
    need = schedule.min_fit_clients
    started = time.monotonic()
    log.info("waiting_for_rejoins", expected=len(expected), timeout=schedule.join_timeout)
    while True:
        gone = admission.revoked | {
            a for a in expected if parts.liveness.state(a) is Liveness.OFFLINE
        }
        missing = expected - admission.agents.keys() - gone
        if not missing and len(admission.agents) >= need:
            return
        if time.monotonic() - started >= schedule.join_timeout:
            if len(admission.agents) < need:
                raise RoundError(
                    f"only {len(admission.agents)} agent(s) joined the resumed run within "
                    f"{schedule.join_timeout} s; at least {need} are needed"
                )
            log.warning("resuming_without", missing=sorted(missing))
            return
        await asyncio.sleep(WAIT_POLL)


def live(parts: RoundParts) -> list[str]:
    """The admitted, unrevoked agents believed alive (one that only missed a deadline counts:
    ``run_round`` samples it when too few others are left)."""
    revoked = parts.admission.revoked
    alive = parts.liveness.alive
    return [a for a in parts.admission.agents if a not in revoked and alive(a, forgive_late=True)]


async def wait_for_cohort(parts: RoundParts, records: list[RoundRecord]) -> None:
    """Until ``min_fit_clients`` agents are live, logging ``round_waiting`` every few seconds.

    Raises:
        RunFailedError: none came within ``join_timeout`` (the fleet vanished).
    """
    schedule = parts.schedule
    need = schedule.min_fit_clients
    if len(live(parts)) >= need:
        return
    parts.board.enter(RoundPhase.WAITING_FOR_AGENTS, f"waiting for {need} live agents")
    parts.board.changed()
    started = last_log = time.monotonic()
    log.warning("round_waiting", live=len(live(parts)), needed=need, timeout=schedule.join_timeout)
    while len(live(parts)) < need:
        now = time.monotonic()
        if now - started >= schedule.join_timeout:
            raise RunFailedError(
                f"the fleet vanished: fewer than {need} live agents for "
                f"{schedule.join_timeout} s after {len(records)} round(s)"
            )
        if now - last_log >= WAIT_LOG_EVERY:
            last_log = now
            log.warning("round_waiting", live=len(live(parts)), needed=need)
        await asyncio.sleep(WAIT_POLL)
