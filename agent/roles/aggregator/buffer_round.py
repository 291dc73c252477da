"""The edges of one async version (``buffered``): the ``fit_ins`` that starts a fit, and
from a buffer's outcome to its record.

What a synchronous round does after its fit (``round.run_round``), for a FedBuff buffer:
the dropouts, the new model recorded in the ledger and published (or the old one kept), the
federated evaluation every ``eval_every`` versions and after the last, the round counted in
the metrics, and the ``RoundRecord`` (a version is a round there), with the buffer's
staleness in ``metrics`` (``staleness_mean``, ``staleness_max``, ``staleness_weight_mean``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict

import structlog

from agent.config import AggregatorConfig
from agent.messages.bodies import FitIns, RoundPhase
from agent.roles.aggregator.broadcast import publish_model, recorded
from agent.roles.aggregator.buffer import Buffer
from agent.roles.aggregator.outcome import Outcome
from agent.roles.aggregator.records import GlobalState, RoundRecord
from agent.roles.aggregator.round import InForce, RoundParts

log = structlog.get_logger(__name__)


def fit_ins(schedule: AggregatorConfig, model: GlobalState, *, hold: bool) -> FitIns:
    """The ``fit_ins`` of an async fit from ``model``: the fit config with the staleness
    function's scalars (``AsyncConfig.fit_config``); ``hold`` under SecAgg+."""
    config = {
        **schedule.fit_config,
        **schedule.strategy.fit_config(),
        **schedule.async_.fit_config(),
    }
    return FitIns(
        model_version=model.version,
        model_sha256=model.sha256,
        deadline=schedule.round_timeout,
        config=config,
        hold=hold,
    )


async def finish_version(
    parts: RoundParts,
    now: InForce,
    r: int,
    buffer: Buffer,
    before: GlobalState,
    outcome: Outcome,
    started: float,
    on_model: Callable[[GlobalState], None],
    superseded: bool = False,
) -> RoundRecord:
    """Record, publish and evaluate version ``r`` made from ``buffer`` (``outcome``: the
    strategy's step, or the failure; ``now.model`` may already be the new model).
    ``on_model`` is called with a new model once it is published; ``started`` is the
    ``time.perf_counter()`` the version's wall time counts from. ``superseded``: a full
    buffer already waits for the next version, so this one is not evaluated (unless it is
    the run's last). The dispatcher sends the newest version made, so each buffer queued
    behind an evaluation adds one to the staleness τ of every fit sent meanwhile; when an
    evaluation lasted longer than a buffer takes to fill (K = 5, or a loaded machine), the
    queue grew without bound, τ with it up to ``max_staleness``, and the model diverged
    (digits: to 10%). Skipping a superseded version's evaluation drains the queue.

    Raises:
        OSError: the ledger record cannot be written.
    """
    cohort = list(buffer.agents)
    survivors = list(outcome.survivors)
    dropouts = sorted(set(cohort) - set(survivors))
    parts.admission.record_round(cohort, dropouts)
    if outcome.weights is not None and now.model is before:
        now.model = await asyncio.to_thread(GlobalState.of, r, outcome.weights)
    now.model = await recorded(parts.ledger, now.model, round=r, cohort=cohort, survivors=survivors)
    if outcome.weights is not None:
        await publish_model(parts.outbox, now.model, round=r)
        on_model(now.model)
    else:
        log.error("round_failed", reason=str(outcome.failure), kept_version=before.version)
    staleness = buffer.staleness_metrics()
    log.info(
        "version_aggregated",
        model_version=now.model.version,
        survivors=len(survivors),
        dropouts=dropouts,
        **staleness,
    )
    loss = accuracy = None
    eval_examples, eval_metrics = 0, {}
    every = parts.schedule.eval_every
    if (every and r % every == 0 and not superseded) or r == parts.schedule.rounds:
        parts.board.enter(RoundPhase.EVALUATING, "evaluating")
        evaluators = frozenset(a for a in parts.admission.agents if parts.liveness.alive(a))
        loss, accuracy, eval_examples = await parts.evaluation.run(r, now.model, evaluators)
        eval_metrics = dict(parts.evaluation.metrics)
    parts.metrics.rounds.labels("completed" if outcome.failure is None else "failed").inc()
    parts.metrics.dropouts.inc(len(dropouts))
    return RoundRecord(
        round=r,
        cohort=cohort,
        survivors=survivors,
        dropouts=dropouts,
        num_examples=outcome.num_examples,
        train_loss=outcome.train_loss,
        accuracy=accuracy,
        loss=loss,
        eval_examples=eval_examples,
        seconds=time.perf_counter() - started,
        model_version=now.model.version,
        model_sha256=now.model.sha256,
        metrics={**outcome.metrics, **staleness},
        eval_metrics=eval_metrics,
        privacy=None if outcome.privacy is None else asdict(outcome.privacy),
    )
