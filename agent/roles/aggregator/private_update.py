"""The aggregator's fit paths meet ``agent.privacy``: secure metrics and DP at the strategy seam.

- ``plain_update``: the plain path's ``AggregatedUpdate``; under DP every survivor's delta is
  clipped again to C and weighted equally (``agent.privacy.engine``).
- ``secure_setup``: the SecAgg+ announcement's vector layout (model, then two words per
  secure metric) and DP settings (``RingPlan``).
- ``secure_update``: the unmasked aggregate back as an ``AggregatedUpdate``: the model part
  as the mean delta, the metric words decoded into the cohort's weighted means. Nothing of
  one agent's metrics is ever held: only the sums the SecAgg+ server unmasked.
- ``release``: the update as the round releases it (central noise, the charge to the
  accountant) and the ``RoundPrivacy`` to record.
- ``privacy_engine``, ``budget_allows``: the run's engine, and whether the next round fits
  ``target_epsilon`` (the schedule stops before one that does not).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from agent.config import AggregatorConfig, SecAggConfig
from agent.messages.bodies import MetricRange
from agent.plugin.api import Weights
from agent.privacy import secure_metrics
from agent.privacy.engine import PrivacyEngine, RingPlan, RoundPrivacy
from agent.roles.aggregator.cohort import cohort_size
from agent.secagg.server import Aggregate
from agent.strategy.update import (
    AggregatedUpdate,
    ClientResult,
    averaged_size,
    mean_update,
    model_delta,
    split,
)


@dataclass(frozen=True, slots=True)
class SecureLayout:
    """What a SecAgg+ round masks: ``model_size`` delta words (the float arrays' values:
    integer arrays are carried, ``agent.strategy.update``), then the ``slots``' words."""

    model_size: int
    slots: list[MetricRange]
    plan: RingPlan

    @property
    def length(self) -> int:
        """d of the announcement: model and metric words (the weight word comes after)."""
        return self.model_size + secure_metrics.width(self.slots)


def plain_update(
    engine: PrivacyEngine, current: Weights, results: Sequence[ClientResult]
) -> AggregatedUpdate:
    """``mean_update`` of ``results``; under DP of their deltas clipped to C, one weight each.

    Raises:
        RoundError: nothing to average.
    """
    if engine.on:
        results = [
            replace(
                r,
                weights=[
                    b + d
                    for b, d in zip(
                        current, engine.clip(model_delta(r.weights, current)), strict=True
                    )
                ],
                num_examples=1,
            )
            for r in results
        ]
    return mean_update(current, results)


def secure_setup(
    engine: PrivacyEngine, settings: SecAggConfig, cohort_size: int, model: Weights
) -> SecureLayout:
    """The vector layout and DP settings of a SecAgg+ round for ``cohort_size`` members.

    Raises:
        ConfigError: no SecAgg+ parameters fit, or a secure metric's range is unusable.
    """
    slots = secure_metrics.slots(settings.metrics)
    if engine.on and engine.config.metric_share == 0:
        slots = []  # the metrics would add sensitivity the budget does not cover
    model_size = averaged_size(model)
    length = model_size + secure_metrics.width(slots)
    plan = engine.ring(settings.params(cohort_size), slots=len(slots), length=length)
    return SecureLayout(model_size, slots, plan)


def secure_update(aggregate: Aggregate, current: Weights, layout: SecureLayout) -> AggregatedUpdate:
    """The unmasked weighted sum as the round's update: mean delta and secure metrics.
    Divides ``aggregate.weighted_sum`` in place (it is the update's delta afterwards)."""
    d = layout.model_size
    noisy = layout.plan.noise_stddev > 0
    metrics = secure_metrics.decode(
        aggregate.weighted_sum[d:],
        layout.slots,
        scale=layout.plan.metric_scale or 1.0,
        total_weight=aggregate.total_weight if noisy else None,
    )
    mean = aggregate.weighted_sum[:d]
    mean /= aggregate.total_weight  # in place (the aggregate is spent): no second copy
    return AggregatedUpdate(
        delta=split(mean, current),
        total_weight=aggregate.total_weight,
        survivors=tuple(aggregate.survivors),
        metrics=metrics,
    )


def release(
    engine: PrivacyEngine,
    update: AggregatedUpdate,
    *,
    cohort_size: int,
    population: int,
    plan: RingPlan | None = None,
) -> tuple[AggregatedUpdate, RoundPrivacy | None]:
    """The update as released (noised and charged under DP) and what the round cost."""
    rate = min(1.0, cohort_size / population) if population > 0 else 1.0
    delta, metrics, spent = engine.release(
        update.delta,
        update.metrics,
        survivors=len(update.survivors),
        sampling_rate=rate,
        plan=plan,
    )
    return replace(update, delta=delta, metrics=metrics), spent


def privacy_engine(schedule: AggregatorConfig, *, seed: int | None = None) -> PrivacyEngine:
    """The run's engine for ``[aggregator.privacy]``, calibrated for the schedule. ``seed``
    fixes its noise for benchmarks and tests only: noise an observer can replay protects
    nothing, so the aggregator leaves it None (OS entropy).

    Raises:
        ConfigError: the budget cannot be met (the aggregator refuses to start).
    """
    expected = cohort_size(
        schedule.min_available_clients,
        fraction=schedule.fraction_fit,
        min_clients=schedule.min_fit_clients,
        max_clients=schedule.max_fit_clients,
    )
    return PrivacyEngine(
        schedule.privacy,
        rounds=schedule.rounds,
        sampling_rate=schedule.fraction_fit,
        expected_cohort=max(1, expected),
        seed=seed,
    )


def budget_allows(
    engine: PrivacyEngine, schedule: AggregatorConfig, admitted: int
) -> tuple[bool, float]:
    """Whether the next round fits ``target_epsilon``, at the sampling rate the cohort
    sampler would draw from ``admitted`` agents (an upper bound: it samples the live ones),
    and the ε it would leave."""
    size = cohort_size(
        admitted,
        fraction=schedule.fraction_fit,
        min_clients=schedule.min_fit_clients,
        max_clients=schedule.max_fit_clients,
    )
    return engine.admits(min(1.0, size / admitted) if admitted else 1.0)
