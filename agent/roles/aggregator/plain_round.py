"""One round with updates in the clear (no secure aggregation): collect the cohort's
``model_update`` messages, each checked against the model in force, until every member
delivered, went offline, or the deadline passed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from agent.errors import RefusedError
from agent.messages.bodies import ModelUpdate
from agent.messages.tensors import to_arrays
from agent.plugin.api import Weights, all_finite, weights_like
from agent.robust.bounds import Admitted, bound_update
from agent.robust.settings import RobustConfig
from agent.roles.aggregator.fold import RunningMean
from agent.roles.aggregator.records import GlobalState
from agent.strategy.carried import CarriedValues
from agent.strategy.fedavg import ClientResult

log = structlog.get_logger(__name__)


class PlainRound:
    """The aggregator's side of one plain round.

    Args:
        cohort: the members asked to train.
        model: the model they train from.
        alive: liveness (a member that went offline is not waited for).
        quorum: complete once this many valid updates arrived (over-selection; None: every
            member).
        robust: the bounds each update must respect (``agent.robust.bounds``).
        declared: an agent's num_examples declared at join (0: unknown).
        fold: fold each valid update into this running sum on arrival and keep only its
            num_examples and metrics (``results`` then hold empty weights); None keeps every
            survivor's weights (for aggregators that need them all).
    """

    def __init__(
        self,
        *,
        cohort: frozenset[str],
        model: GlobalState,
        alive: Callable[[str], bool],
        quorum: int | None = None,
        robust: RobustConfig | None = None,
        declared: Callable[[str], int] = lambda _: 0,
        fold: RunningMean | None = None,
    ) -> None:
        self.cohort = cohort
        self._model = model
        self._alive = alive
        self._quorum = quorum
        self._robust = robust or RobustConfig()
        self._declared = declared
        self.fold = fold
        #: the valid updates' integer arrays, for the new model's (``strategy.carried``)
        self.carried = CarriedValues(model.weights)
        self.results: dict[str, ClientResult] = {}
        #: members whose update was refused (they answered: not waited for)
        self.refused: dict[str, str] = {}
        #: members still waited for when the deadline passed (set by ``wait``)
        self.late: frozenset[str] = frozenset()
        self._complete = asyncio.Event()

    def on_update(self, sender: str, body: ModelUpdate) -> None:
        """Keep a valid update (bounded: ``agent.robust.bounds``); log ``update_rejected``
        with the reason otherwise. A member whose update was refused for its content has
        answered: the round does not wait for it."""
        reason = None
        if sender not in self.cohort:
            reason = "not_in_cohort"
        elif sender in self.results or sender in self.refused:
            reason = "already_received"
        elif body.model_version != self._model.version:
            reason = "wrong_model_version"
        if reason is not None:
            log.warning("update_rejected", agent=sender, reason=reason)
            return
        try:
            weights, weight, verdict = self._bounded(sender, body)
        except RefusedError as exc:
            self.refused[sender] = exc.reason
            log.warning("update_rejected", agent=sender, reason=exc.reason, detail=str(exc))
            self.check_complete()
            return
        if verdict.clipped or weight != body.num_examples:
            log.info(
                "update_bounded",
                agent=sender,
                norm=round(verdict.norm, 6),
                clipped=verdict.clipped,
                weight=weight,
                num_examples=body.num_examples,
            )
        self.carried.add(sender, weights)
        if self.fold is not None:
            self.fold.add(weights, weight)
            weights = []
        self.results[sender] = ClientResult(sender, weights, weight, body.metrics)
        log.info(
            "update_received",
            agent=sender,
            num_examples=body.num_examples,
            received=len(self.results),
            cohort_size=len(self.cohort),
        )
        self.check_complete()

    def _bounded(self, sender: str, body: ModelUpdate) -> tuple[Weights, int, Admitted]:
        return bounded(
            self._model.weights, body, declared=self._declared(sender), robust=self._robust
        )

    def check_complete(self) -> None:
        """Complete when every member delivered (or was refused) or went offline, or
        ``quorum`` delivered."""
        answered = self.results.keys() | self.refused.keys()
        waiting = {a for a in self.cohort - answered if self._alive(a)}
        enough = self._quorum is not None and len(self.results) >= self._quorum
        if self.cohort and (enough or not waiting):
            self._complete.set()

    async def wait(self, seconds: float) -> list[ClientResult]:
        """The results, sorted by agent id, once complete or after ``seconds``."""
        try:
            async with asyncio.timeout(seconds):
                await self._complete.wait()
        except TimeoutError:
            answered = self.results.keys() | self.refused.keys()
            self.late = frozenset(a for a in self.cohort - answered if self._alive(a))
        return [self.results[a] for a in sorted(self.results)]


def bounded(
    base: Weights, body: ModelUpdate, *, declared: int, robust: RobustConfig
) -> tuple[Weights, int, Admitted]:
    """The update's weights and weight under the bounds (``agent.robust.bounds``), against
    ``base``, the model it was trained from; ``declared``: the sender's num_examples at join.

    Raises:
        RefusedError: ``shape_mismatch``, ``not_finite`` or a bound's reason.
    """
    weights = to_arrays(body.tensors)
    if not weights_like(base, weights):
        raise RefusedError("shape_mismatch", "not shaped like the model in force")
    if not all_finite(weights):
        raise RefusedError("not_finite", "NaN or infinity in the weights")
    return bound_update(base, weights, body.num_examples, declared=declared, settings=robust)
