"""The whole run: wait for agents, run every round of the schedule, persist each, finish."""

from __future__ import annotations

import asyncio

import structlog

from agent.messages import topics
from agent.messages.bodies import Finish, RoundPhase
from agent.roles.aggregator.broadcast import publish_model, recorded
from agent.roles.aggregator.fit import RoundFailure
from agent.roles.aggregator.persistence import RunStore
from agent.roles.aggregator.private_update import budget_allows
from agent.roles.aggregator.records import RoundRecord, RunSummary
from agent.roles.aggregator.round import InForce, RoundParts, run_round

log = structlog.get_logger(__name__)


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


async def federate(parts: RoundParts, now: InForce, store: RunStore) -> RunSummary:
    """Persist the initial model, wait for ``min_available_clients`` agents, publish the
    model, run ``rounds`` rounds (each persisted as it ends), then close admission and send
    ``finish``. Returns every round's record and the final model's version and digest.

    Raises:
        RoundError: fewer than ``min_fit_clients`` agents joined within ``join_timeout``.
        OSError: the state directory cannot be written.
    """
    schedule, board, admission = parts.schedule, parts.board, parts.admission
    await store.save_model(0, now.model)
    now.model = await recorded(parts.ledger, now.model, round=0)
    wanted = schedule.min_available_clients
    board.enter(RoundPhase.WAITING_FOR_AGENTS, f"waiting for {wanted} agents")
    await admission.wait(seconds=schedule.join_timeout, at_least=schedule.min_fit_clients)
    await publish_model(parts.outbox, now.model, round=now.round)
    records: list[RoundRecord] = []
    stopped: str | None = None
    for r in range(1, schedule.rounds + 1):
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
            record = await run_round(parts, now, r)
            await store.save_round(record, now.model)
            await store.save_strategy(r, parts.fit.strategy.state())
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
    admission.close()  # joins from now on belong to the next run's aggregator
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
