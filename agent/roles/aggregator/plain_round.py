"""One round with updates in the clear (no secure aggregation): collect the cohort's
``model_update`` messages, each checked against the model in force, until every member
delivered, went offline, or the deadline passed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from agent.errors import RefusedError
from agent.mapped import detach
from agent.messages.bodies import ModelUpdate
from agent.messages.tensors import to_arrays
from agent.plugin.api import Weights, all_finite, weights_like
from agent.robust.bounds import Admitted, bound_update
from agent.robust.settings import RobustConfig
from agent.roles.aggregator.fold import RunningMean
from agent.roles.aggregator.fold_stream import FoldStream, header, open_stream
from agent.roles.aggregator.records import GlobalState
from agent.runtime.assembly import Transfer
from agent.strategy.carried import CarriedValues
from agent.strategy.fedavg import ClientResult

__all__ = ["FoldStream", "PlainRound", "Transfer", "bounded"]  # the stream hook's types too

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
        self._lock = asyncio.Lock()
        self._closed = False
        #: sender → its update being folded chunk by chunk (``fold_stream``)
        self._streams: dict[str, FoldStream] = {}

    def on_update(self, sender: str, body: ModelUpdate) -> None:
        """Keep a valid update (bounded: ``agent.robust.bounds``); log ``update_rejected``
        with the reason otherwise. A member whose update was refused for its content has
        answered: the round does not wait for it."""
        if not self._accepts(sender, body):
            return
        try:
            admitted = self._admit(sender, body)
        except RefusedError as exc:
            self._refuse(sender, exc)
            return
        self._keep(sender, body, *admitted)

    async def receive(self, sender: str, body: ModelUpdate, message_id: bytes = b"") -> None:
        """``on_update`` with the passes over the update (bounds, fold) in a worker thread,
        so the event loop keeps receiving meanwhile; one update at a time. An update whose
        chunks were folded as they came (``stream``; ``message_id``: its manifest's) is
        only finished here."""
        async with self._lock:
            if not self._accepts(sender, body):
                return
            stream = self._streams.pop(sender, None)
            try:
                if stream is not None and stream.message_id == message_id:
                    admitted = await self._finish(sender, body, stream)
                else:
                    admitted = await asyncio.to_thread(self._admit, sender, body)
            except RefusedError as exc:
                self._refuse(sender, exc)
                return
            self._keep(sender, body, *admitted)

    def stream(self, transfer: Transfer) -> FoldStream | None:
        """The sink that folds a chunked update's chunks as they arrive (``fold_stream``),
        for a member's update of the model in force while folding; None: it is checked and
        folded whole once complete (or refused then)."""
        fold, sender = self.fold, transfer.sender
        if fold is None or self._closed or sender not in self.cohort or sender in self._streams:
            return None
        update = header(transfer)
        if (
            update is None
            or sender in self.results
            or sender in self.refused
            or update.model_version != self._model.version
            or 0 < self._declared(sender) < update.num_examples
        ):
            return None
        weight = max(1, min(update.num_examples, self._robust.max_weight))
        stream = open_stream(fold, transfer, self._model.weights, update, weight)
        if stream is not None:
            self._streams[sender] = stream
        return stream

    async def _finish(
        self, sender: str, body: ModelUpdate, stream: FoldStream
    ) -> tuple[Weights, int, Admitted]:
        """A streamed update, complete: its verdict once its last chunk is folded."""
        weights = to_arrays(body.tensors)
        if not weights_like(self._model.weights, weights):
            raise RefusedError("shape_mismatch", "not shaped like the model in force")
        norm = await stream.finish()
        if norm is None:
            raise RefusedError("not_finite", "NaN or infinity in the update or its delta")
        self.carried.add(sender, weights)
        return [], stream.weight, Admitted([], stream.weight, norm, float_norm=norm)

    def _accepts(self, sender: str, body: ModelUpdate) -> bool:
        reason = None
        if self._closed:
            reason = "round_closed"
        elif sender not in self.cohort:
            reason = "not_in_cohort"
        elif sender in self.results or sender in self.refused:
            reason = "already_received"
        elif body.model_version != self._model.version:
            reason = "wrong_model_version"
        if reason is not None:
            log.warning("update_rejected", agent=sender, reason=reason)
        return reason is None

    def _admit(self, sender: str, body: ModelUpdate) -> tuple[Weights, int, Admitted]:
        """The bounded update, folded when streaming (its weights then empty)."""
        weights, weight, verdict = self._bounded(sender, body)
        self.carried.add(sender, weights)
        if self.fold is not None:
            # the norm admit took, unless clipping changed the weights since
            norm = None if verdict.clipped else verdict.float_norm
            self.fold.add(weights, weight, agent_id=sender, norm=norm)
            weights = []
        else:  # kept until the round closes: in memory, not a mapping of its spool
            weights = detach(weights)
        return weights, weight, verdict

    def _refuse(self, sender: str, exc: RefusedError) -> None:
        self.refused[sender] = exc.reason
        log.warning("update_rejected", agent=sender, reason=exc.reason, detail=str(exc))
        self.check_complete()

    def _keep(
        self, sender: str, body: ModelUpdate, weights: Weights, weight: int, verdict: Admitted
    ) -> None:
        if verdict.clipped or weight != body.num_examples:
            log.info(
                "update_bounded",
                agent=sender,
                norm=round(verdict.norm, 6),
                clipped=verdict.clipped,
                weight=weight,
                num_examples=body.num_examples,
            )
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
            pass
        async with self._lock:  # an update being folded in a thread finishes first
            self._closed = True
            if not self._complete.is_set():
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
