"""Federated evaluation (ARCHITECTURE.md §4, step 5): the aggregator broadcasts ``evaluate`` for a
model version and aggregates the ``metrics`` that come back, weighted by num_examples."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

import numpy as np
import structlog

from agent.errors import RefusedError
from agent.messages import topics
from agent.messages.bodies import EvaluateIns, EvaluateRes, Scalar
from agent.robust.evaluation import check_result
from agent.robust.settings import RobustConfig
from agent.roles.aggregator.records import GlobalState
from agent.runtime.metrics import Metrics
from agent.runtime.outbox import Outbox
from agent.strategy.update import weighted_mean, weighted_metrics

log = structlog.get_logger(__name__)


class FederatedEvaluation:
    """Evaluations of the aggregator's model, one at a time.

    Args:
        outbox: sends ``evaluate``.
        timeout: seconds to wait for the evaluators' ``metrics``.
        config: scalars sent with every ``evaluate``.
        metrics: observes each evaluation's duration (``stage_seconds{stage="evaluate"}``).
        robust: the bounds a result must respect (``agent.robust.evaluation``).
        declared: an agent's num_examples declared at join (0: unknown).
    """

    def __init__(
        self,
        outbox: Outbox,
        *,
        timeout: float,
        config: Mapping[str, Scalar],
        metrics: Metrics,
        robust: RobustConfig | None = None,
        declared: Callable[[str], int] = lambda _: 0,
    ) -> None:
        self._outbox = outbox
        self._max_weight = (robust or RobustConfig()).max_weight
        self._declared = declared
        self._metrics = metrics
        self._timeout = timeout
        self._config = dict(config)
        self._version = -1
        self._evaluators: frozenset[str] = frozenset()
        self._results: dict[str, EvaluateRes] = {}
        #: each kept result's weight: min(num_examples, max_weight)
        self._weights: dict[str, int] = {}
        #: evaluators whose result was out of range: they answered (not late), nothing kept
        self._refused: set[str] = set()
        self._complete = asyncio.Event()
        #: evaluators of the last run still waited for when ``timeout`` passed
        self.late: frozenset[str] = frozenset()
        #: the last evaluation's metrics, each num_examples-weighted over its reporters
        self.metrics: dict[str, float] = {}

    async def run(
        self, r: int, state: GlobalState, evaluators: frozenset[str]
    ) -> tuple[float | None, float | None, int]:
        """Evaluate ``state`` on ``evaluators``: (loss, accuracy, examples); Nones when no
        result with examples came back before the timeout."""
        self._version, self._evaluators = state.version, evaluators
        self._results, self._weights, self._refused = {}, {}, set()
        self.metrics = {}
        self._complete.clear()
        self.late = frozenset()
        if not evaluators:
            log.warning("evaluation_skipped", reason="no_responsive_agent")
            return None, None, 0
        ins = EvaluateIns(
            model_version=state.version, model_sha256=state.sha256, config=self._config
        )
        started = time.monotonic()
        await self._outbox.try_send(topics.EVALUATE, ins, round=r)
        try:
            async with asyncio.timeout(self._timeout):
                await self._complete.wait()
        except TimeoutError:
            log.warning("evaluation_incomplete", answered=len(self._results))
            self.late = self._evaluators - self._results.keys() - self._refused
        self._metrics.stage_seconds.labels("evaluate").observe(time.monotonic() - started)
        results = [(x, self._weights[a]) for a, x in self._results.items() if x.num_examples > 0]
        if not results:
            return None, None, 0
        loss = weighted_mean([(x.loss, w) for x, w in results])
        self.metrics = weighted_metrics([(x.metrics, w) for x, w in results])
        accuracy = weighted_mean(
            [
                (float(x.metrics["accuracy"]), w)
                for x, w in results
                if isinstance(x.metrics.get("accuracy"), int | float)
            ]
        )
        examples = sum(x.num_examples for x, _ in results)
        return loss, (None if np.isnan(accuracy) else accuracy), examples

    def forget(self, agent_id: str) -> None:
        """An evaluator went offline: the evaluation stops waiting for it."""
        if agent_id in self._evaluators:
            self._evaluators = self._evaluators - {agent_id}
            self._check_complete()

    def _check_complete(self) -> None:
        if self._evaluators <= self._results.keys() | self._refused:
            self._complete.set()

    def on_metrics(self, sender: str, body: EvaluateRes) -> None:
        """A result: kept if it is for the model under evaluation, from an agent asked, and
        in range (``agent.robust.evaluation``); ``metrics_rejected`` with the reason if not. An
        asked evaluator whose result is out of range has still answered: the evaluation does
        not wait for it, and it is not counted late (``late``: a missed deadline)."""
        if body.model_version != self._version:
            log.warning(
                "metrics_rejected",
                agent=sender,
                reason="wrong_model_version",
                model_version=body.model_version,
            )
            return
        if sender not in self._evaluators or sender in self._results.keys() | self._refused:
            reason = "not_asked" if sender not in self._evaluators else "already_received"
            log.warning("metrics_rejected", agent=sender, reason=reason)
            return
        try:
            weight = check_result(
                loss=body.loss,
                num_examples=body.num_examples,
                metrics=body.metrics,
                declared=self._declared(sender),
                max_weight=self._max_weight,
            )
        except RefusedError as exc:
            log.warning("metrics_rejected", agent=sender, reason=exc.reason, detail=str(exc))
            self._refused.add(sender)
            self._check_complete()
            return
        self._weights[sender] = weight
        self._results[sender] = body
        self._check_complete()
