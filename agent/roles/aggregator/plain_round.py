"""One round with updates in the clear (no secure aggregation): collect the cohort's
``model_update`` messages, each checked against the model in force, until every member
delivered, went offline, or the deadline passed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from agent.messages.bodies import ModelUpdate
from agent.messages.tensors import to_arrays
from agent.plugin.api import all_finite, weights_like
from agent.roles.aggregator.records import GlobalState
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
    """

    def __init__(
        self,
        *,
        cohort: frozenset[str],
        model: GlobalState,
        alive: Callable[[str], bool],
        quorum: int | None = None,
    ) -> None:
        self.cohort = cohort
        self._model = model
        self._alive = alive
        self._quorum = quorum
        self.results: dict[str, ClientResult] = {}
        #: members still waited for when the deadline passed (set by ``wait``)
        self.late: frozenset[str] = frozenset()
        self._complete = asyncio.Event()

    def on_update(self, sender: str, body: ModelUpdate) -> None:
        """Keep a valid update; log ``update_rejected`` with the reason otherwise."""
        reason = None
        if sender not in self.cohort:
            reason = "not_in_cohort"
        elif sender in self.results:
            reason = "already_received"
        elif body.model_version != self._model.version:
            reason = "wrong_model_version"
        if reason is None:
            weights = to_arrays(body.tensors)
            if not weights_like(self._model.weights, weights):
                reason = "shape_mismatch"
            elif not all_finite(weights):
                reason = "not_finite"
        if reason is not None:
            log.warning("update_rejected", agent=sender, reason=reason)
            return
        self.results[sender] = ClientResult(sender, weights, body.num_examples, body.metrics)
        log.info(
            "update_received",
            agent=sender,
            num_examples=body.num_examples,
            received=len(self.results),
            cohort_size=len(self.cohort),
        )
        self.check_complete()

    def check_complete(self) -> None:
        """Complete when every member delivered or went offline, or ``quorum`` delivered."""
        waiting = {a for a in self.cohort - self.results.keys() if self._alive(a)}
        enough = self._quorum is not None and len(self.results) >= self._quorum
        if self.cohort and (enough or not waiting):
            self._complete.set()

    async def wait(self, seconds: float) -> list[ClientResult]:
        """The results, sorted by agent id, once complete or after ``seconds``."""
        try:
            async with asyncio.timeout(seconds):
                await self._complete.wait()
        except TimeoutError:
            self.late = frozenset(a for a in self.cohort - self.results.keys() if self._alive(a))
        return [self.results[a] for a in sorted(self.results)]
