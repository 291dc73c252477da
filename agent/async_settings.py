"""``[aggregator.async]``: buffered asynchronous aggregation (FedBuff: Nguyen et al.,
"Federated Learning with Buffered Asynchronous Aggregation", AISTATS 2022) and its staleness
weighting s(τ).

A leaf: ``agent.config`` embeds ``AsyncConfig``; the aggregator's buffer
(``agent.roles.aggregator.buffer``) and the trainer's async SecAgg+ path
(``agent.roles.trainer.async_fit``) both compute ``staleness_weight`` from it, the trainer
from the scalars ``fit_config`` puts in every ``fit_ins`` of an async run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Annotated

import msgspec

from agent.errors import ConfigError

Scalar = bool | int | float | str

NonNegative = Annotated[float, msgspec.Meta(ge=0)]


class Staleness(StrEnum):
    """The staleness function s(τ) of an update trained from a model τ versions old.

    ``polynomial``: s(τ) = (1 + τ)^(-a) (FedBuff §5 uses a = 1/2: 1/√(1+τ), the default).
    ``constant``: s(τ) = 1 (no down-weighting; plain FedBuff averaging).
    ``hinge``: s(τ) = 1 for τ ≤ b, else 1 / (a·(τ - b) + 1) (Xie et al., "Asynchronous
    Federated Optimization", 2019, §5.2).
    """

    POLYNOMIAL = "polynomial"
    CONSTANT = "constant"
    HINGE = "hinge"


class Participation(StrEnum):
    """How an async update's weight accounts for how often its agent contributes.

    ``interval``: ω = the agent's mean participation interval in versions (FedAU, Wang &
    Ji, ICLR 2024; ``agent.roles.aggregator.participation``).
    ``none``: ω = 1 (FedBuff as published: an agent counts as often as it arrives).
    """

    INTERVAL = "interval"
    NONE = "none"


class AsyncConfig(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """``[aggregator.async]`` (used when ``[aggregator] mode = "async"``).

    The defaults follow FedBuff (Nguyen et al. 2022, §5-6): K = 10 updates per version, the
    setting the paper's experiments use, many more agents training than K (so that no agent
    waits for a version: a fleet smaller than ``concurrency`` keeps every agent training),
    s(τ) = 1/√(1+τ), and the server step of ``[aggregator.strategy]`` (FedAvg: x + Δ).

    Attributes:
        concurrency: at most this many agents train at once (FedBuff's concurrency).
        buffer_size: K, the updates aggregated into each new model version (FedBuff's K);
            under SecAgg+ the size of each buffer's secure round, filled by K distinct
            agents (each holds one update): the fleet needs K agents online.
        staleness: the function s(τ) (``Staleness``).
        exponent: a of ``polynomial``.
        hinge_a, hinge_b: a and b of ``hinge`` (Xie et al. 2019 use a = 10, b = 4).
        max_staleness: an update trained from a model more than this many versions old is
            refused (``too_stale``).
        participation: ``Participation``: ``interval`` weighs each plain update by its
            agent's mean participation interval (FedAU), so a slow or intermittent agent's
            data counts as much as a fast one's; ignored under SecAgg+ (each agent weighs
            its own masked update and knows only its staleness). Off (``none``, FedBuff as
            published) by default: on ``bench/modes.py``'s fleet it did not make async
            reliably faster to 93% (ARCHITECTURE.md §4), and on milder splits it was slower.
        participation_cap: FedAU's cutoff of one participation interval, in versions.
    """

    concurrency: Annotated[int, msgspec.Meta(ge=1)] = 100
    buffer_size: Annotated[int, msgspec.Meta(ge=1)] = 10
    staleness: Staleness = Staleness.POLYNOMIAL
    exponent: NonNegative = 0.5
    hinge_a: NonNegative = 10.0
    hinge_b: Annotated[int, msgspec.Meta(ge=0)] = 4
    max_staleness: Annotated[int, msgspec.Meta(ge=0)] = 20
    participation: Participation = Participation.NONE
    participation_cap: Annotated[float, msgspec.Meta(gt=0)] = 20.0

    def weight(self, tau: int) -> float:
        """s(τ) in (0, 1] for an update τ ≥ 0 versions old (``Staleness``).

        Raises:
            ValueError: τ < 0 (an update from a model newer than the one in force).
        """
        return staleness_weight(
            tau, self.staleness, exponent=self.exponent, a=self.hinge_a, b=self.hinge_b
        )

    def check(
        self, *, privacy: bool, aggregation: str, secagg: Callable[[int], object] | None
    ) -> None:
        """What buffered asynchronous aggregation cannot do (yet): DP (no analysis of
        stale, staleness-weighted updates), a robust rule (each update is folded on
        arrival), and SecAgg+ parameters that fail for a cohort of ``buffer_size``
        (``secagg``: ``SecAggConfig.params``, None without SecAgg+).

        Raises:
            ValueError: the message names the setting.
        """
        if privacy:
            raise ValueError("mode = 'async' has no DP analysis: [aggregator.privacy] must be off")
        if aggregation != "mean":
            raise ValueError("mode = 'async' folds each update on arrival: aggregation = 'mean'")
        if secagg is not None:
            try:
                secagg(self.buffer_size)
            except ConfigError as exc:
                raise ValueError(
                    f"[aggregator.async] buffer_size = {self.buffer_size} under SecAgg+: {exc}"
                ) from exc

    def fit_config(self) -> dict[str, Scalar]:
        """The scalars an async run adds to every ``fit_ins`` config, so that an agent can
        weigh its own update before masking it (``from_fit_config`` reads them back)."""
        return {
            "staleness": str(self.staleness),
            "staleness_exponent": self.exponent,
            "staleness_hinge_a": self.hinge_a,
            "staleness_hinge_b": self.hinge_b,
        }


def staleness_weight(
    tau: int, function: Staleness, *, exponent: float = 0.5, a: float = 10.0, b: int = 4
) -> float:
    """s(τ) of ``function`` (see ``Staleness``), a float in (0, 1].

    Raises:
        ValueError: τ < 0.
    """
    if tau < 0:
        raise ValueError(f"staleness τ = {tau} < 0")
    match function:
        case Staleness.CONSTANT:
            return 1.0
        case Staleness.POLYNOMIAL:
            return float((1.0 + tau) ** -exponent)
        case Staleness.HINGE:
            return 1.0 if tau <= b else 1.0 / (a * (tau - b) + 1.0)
    raise ValueError(f"unknown staleness function {function!r}")  # pragma: no cover


def from_fit_config(config: Mapping[str, Scalar], tau: int) -> float:
    """s(τ) as the ``fit_ins`` config of an async run names it (``AsyncConfig.fit_config``).

    Raises:
        ValueError: τ < 0, or the config names no (or an unknown) staleness function, or
            its parameters are not finite non-negative numbers.
    """
    try:
        function = Staleness(str(config["staleness"]))
        exponent = float(config.get("staleness_exponent", 0.5))
        a = float(config.get("staleness_hinge_a", 10.0))
        b = int(config.get("staleness_hinge_b", 4))
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"the fit config names no valid staleness function: {exc}") from exc
    if not all(math.isfinite(x) and x >= 0 for x in (exponent, a, b)):
        raise ValueError("staleness parameters must be finite and non-negative")
    return staleness_weight(tau, function, exponent=exponent, a=a, b=b)
