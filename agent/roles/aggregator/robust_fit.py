"""The ``[aggregator.robust]`` bounds in the fit part of a round (ARCHITECTURE.md §12):

- ``robust_update``: the plain round's aggregate: the cohort-relative norm bound on the
  round's updates, then the aggregation rule (the weighted mean, or a robust rule of
  ``agent.robust.aggregate``), into one ``AggregatedUpdate`` for the strategy step;
- ``check_secure``: the unmasked SecAgg+ mean against what honest inputs can produce;
- ``guarded_step``: the strategy's step, kept only if the new model passes the guard.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence

import structlog

from agent.errors import ModelRejectedError, RefusedError
from agent.plugin.api import Weights
from agent.robust.aggregate import robust_mean
from agent.robust.bounds import (
    MIN_FOR_MEDIAN,
    bounded,
    delta_norms,
    rebuild,
    relative_bound,
)
from agent.robust.guard import check_model
from agent.robust.secure import check_mean
from agent.robust.settings import Aggregation, RobustConfig
from agent.secagg.params import SecAggParams
from agent.secagg.server import Aggregate
from agent.strategy.base import Strategy
from agent.strategy.update import (
    AggregatedUpdate,
    ClientResult,
    mean_update,
    model_delta,
    weighted_mean,
)

log = structlog.get_logger(__name__)


def robust_update(
    current: Weights,
    results: Sequence[ClientResult],
    settings: RobustConfig,
    mean: Callable[[Weights, Sequence[ClientResult]], AggregatedUpdate] = mean_update,
) -> AggregatedUpdate | None:
    """The round's ``AggregatedUpdate`` from ``results`` (each already admitted by
    ``agent.robust.bounds.admit``); None when the relative norm bound refused them all.
    ``mean``: the ``mean`` rule (the weighted mean; under DP, of the deltas clipped again,
    ``private_update.plain_update``); the robust rules do not combine with DP (the config
    refuses it).

    Cost: one delta pass per update for the norms (O(n·d)); a robust rule keeps all n deltas
    in float64 (8·n·d bytes) and costs what its table in ``agent.robust.aggregate`` says.
    """
    kept = _within_relative_bound(current, results, settings)
    if not kept:
        return None
    if settings.aggregation is Aggregation.MEAN:
        return mean(current, kept)
    deltas = [model_delta(r.weights, current) for r in kept]
    delta = robust_mean(deltas, [r.num_examples for r in kept], settings)
    metrics: dict[str, float] = {}
    loss = weighted_mean(
        [
            (float(v), r.num_examples)
            for r in kept
            if isinstance(v := r.metrics.get("train_loss"), int | float)
        ]
    )
    if not math.isnan(loss):
        metrics["train_loss"] = loss
    log.info("robust_aggregation", rule=str(settings.aggregation), updates=len(kept))
    survivors = tuple(sorted(r.agent_id for r in kept))
    return AggregatedUpdate(delta, sum(r.num_examples for r in kept), survivors, metrics)


def _within_relative_bound(
    current: Weights, results: Sequence[ClientResult], settings: RobustConfig
) -> list[ClientResult]:
    """``results`` with every delta above ``norm_factor`` times the median norm clipped or
    dropped (``on_norm``), each logged."""
    if settings.norm_factor <= 0 or len(results) < MIN_FOR_MEDIAN:
        return list(results)
    norms = [delta_norms(current, r.weights)[1] for r in results]  # no delta held
    bound = relative_bound(norms, settings.norm_factor)
    if bound is None:
        return list(results)
    kept: list[ClientResult] = []
    for r, norm in zip(results, norms, strict=True):
        if norm <= bound:
            kept.append(r)
            continue
        try:
            delta = bounded(model_delta(r.weights, current), norm, bound, settings.on_norm)
        except RefusedError as exc:
            log.warning("update_rejected", agent=r.agent_id, reason=exc.reason, detail=str(exc))
            continue
        log.info("update_bounded", agent=r.agent_id, norm=round(norm, 6), clipped=True)
        kept.append(ClientResult(r.agent_id, rebuild(current, delta), r.num_examples, r.metrics))
    return kept


def check_secure(
    aggregate: Aggregate,
    params: SecAggParams,
    settings: RobustConfig,
    *,
    model_size: int,
    noisy: bool = False,
) -> None:
    """``agent.robust.secure.check_mean`` on a SecAgg+ round's aggregate (the model's
    ``model_size`` words and the secure-metric words after them, each in [-c, c]), with the
    L2 bound the round announced (``max_update_norm``) on the model part. Under distributed
    DP (``noisy``) the noise in the sum is unbounded in norm, so the norm check is off; the
    coordinate checks keep the headroom the noise was planned with.

    Raises:
        SecAggAbortError: ``out_of_range``.
    """
    norm_bound = 0.0 if noisy else settings.max_update_norm
    parts = aggregate.weighted_sum[:model_size], aggregate.weighted_sum[model_size:]
    for part, bound in zip(parts, (norm_bound, 0.0), strict=True):
        check_mean(
            part,
            total_weight=aggregate.total_weight,
            survivors=len(aggregate.survivors),
            clipping_range=params.clipping_range,
            step=params.step,
            max_weight=params.max_weight,
            norm_bound=bound,
        )


async def guarded_step(
    strategy: Strategy, current: Weights, update: AggregatedUpdate, settings: RobustConfig
) -> Weights | None:
    """``strategy.step(current, update)`` if the new model passes the guard
    (``agent.robust.guard``); else None, logged as ``model_rejected``, with the strategy's
    state restored to what it was before the step."""
    state = strategy.state()
    weights: Weights = await asyncio.to_thread(strategy.step, current, update)
    try:
        await asyncio.to_thread(check_model, current, weights, settings)
    except ModelRejectedError as exc:
        log.error("model_rejected", reason=exc.reason, error=str(exc))  # noqa: TRY400
        strategy.load_state(state)
        return None
    return weights
