"""What the fit part of a round produced (``Outcome``) and why a round produced no new model
(``RoundFailure``): the result ``fit.CohortFit.run`` hands to ``round.run_round``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from agent.plugin.api import Weights
from agent.privacy.engine import RoundPrivacy
from agent.strategy.update import AggregatedUpdate


class RoundFailure(StrEnum):
    """Why a round produced no new model (the model in force is kept)."""

    NO_COHORT = "no_cohort"  # fewer than min_fit_clients alive: the round did not run
    NO_UPDATE = "no_update_arrived"  # plain: no valid update before the deadline
    SECAGG_PARAMETERS = "secagg_parameters"  # no SecAgg+ parameters fit the cohort size
    SECAGG_ABORTED = "secagg_aborted"  # the SecAgg+ protocol aborted (SecAggAbortError)
    MODEL_REJECTED = "model_rejected"  # the new model failed the guard (agent.robust.guard)
    PRIVACY_BUDGET = "privacy_budget"  # the round would exceed target_epsilon: not run


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the fit part of a round produced.

    Attributes:
        weights: the new model; None exactly when ``failure`` is set.
        survivors: the cohort members whose result went into ``weights``.
        num_examples: the survivors' total examples (their aggregation weight).
        train_loss: num_examples-weighted mean of the survivors' ``train_loss`` (NaN: none).
        failure: why there is no new model; None when the round succeeded.
        metrics: the survivors' fit metrics, num_examples-weighted (``AggregatedUpdate``).
        privacy: what the round cost under DP (None without).
    """

    weights: Weights | None = None
    survivors: list[str] = field(default_factory=list)
    num_examples: int = 0
    train_loss: float = math.nan
    failure: RoundFailure | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    privacy: RoundPrivacy | None = None

    @classmethod
    def failed(cls, failure: RoundFailure) -> Outcome:
        return cls(failure=failure)

    @classmethod
    def of(
        cls, weights: Weights, update: AggregatedUpdate, privacy: RoundPrivacy | None = None
    ) -> Outcome:
        """The new model ``weights``, stepped from ``update``."""
        return cls(
            weights=weights,
            survivors=list(update.survivors),
            num_examples=update.total_weight,
            train_loss=update.train_loss,
            metrics=dict(update.metrics),
            privacy=privacy,
        )
