"""One round (ARCHITECTURE.md §4): from the model in force and the admitted agents to the round's
record.

Sample a cohort from the admitted agents believed alive, have it fit (``CohortFit``: plain or
SecAgg+; dropouts are normal), publish the new model (retained on MQTT) or keep the old one,
evaluate every ``eval_every`` rounds and after the last, count the round in the metrics.
Persisting the record is the caller's (``agent.roles.aggregator.persistence``).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

import structlog

from agent.config import AggregatorConfig
from agent.ledger.book import RoundLedger
from agent.messages.bodies import Liveness, RoundPhase
from agent.messages.signing import Signer
from agent.roles.aggregator.admission import Admission
from agent.roles.aggregator.broadcast import publish_model, recorded
from agent.roles.aggregator.cohort import cohort_size, sample_cohort
from agent.roles.aggregator.evaluation import FederatedEvaluation
from agent.roles.aggregator.fit import CohortFit
from agent.roles.aggregator.ledger_replies import LedgerReplies
from agent.roles.aggregator.outcome import Outcome, RoundFailure
from agent.roles.aggregator.records import GlobalState, RoundObserver, RoundRecord
from agent.roles.aggregator.status import StatusBoard
from agent.roles.liveness import LivenessTracker
from agent.runtime.listeners import ListenerRegistry
from agent.runtime.metrics import Metrics
from agent.runtime.outbox import Outbox

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class InForce:
    """The aggregator's current round (0 before round 1) and the global model in force."""

    round: int
    model: GlobalState


@dataclass(frozen=True, slots=True)
class RoundParts:
    """What every round uses and outlives it (one set per aggregator)."""

    schedule: AggregatorConfig
    outbox: Outbox
    rng: random.Random
    admission: Admission
    liveness: LivenessTracker
    fit: CohortFit
    evaluation: FederatedEvaluation
    board: StatusBoard
    metrics: Metrics
    observer: RoundObserver | None = None
    #: ``Bus.wait_connected(timeout)``: no round starts while the broker is down
    connected: Callable[[float | None], Awaitable[None]] | None = None
    #: ``time.monotonic()`` of the bus's last reconnect (-inf: none): a deadline missed during
    #: a round that began less than a ``round_timeout`` after it, or while the bus is down, is
    #: the broker's doing (the members' peers were still reconnecting) and marks no one late
    reconnected_at: Callable[[], float] = lambda: float("-inf")
    #: the signed round ledger (None: identities off)
    ledger: RoundLedger | None = None

    def sign_with(self, signer: Signer) -> None:
        """Sign messages and ledger records with ``signer`` from now on (a renewed
        aggregator certificate, ``runtime.own_renewal``)."""
        self.outbox.signer = signer
        if self.ledger is not None:
            self.ledger.signer = signer

    def serve_ledger(self, registry: ListenerRegistry) -> None:
        """Answer trainers that missed ledger records (``ledger_replies``)."""
        if self.ledger is not None:
            LedgerReplies(self.ledger, self.outbox).register(registry)


async def run_round(parts: RoundParts, now: InForce, r: int) -> RoundRecord:
    """Run round ``r`` (1-based): ``now`` becomes round ``r`` at once and holds the new
    model once it is aggregated (the old one when the round failed).

    Returns the round's record; a failed round (no cohort, no update, SecAgg+ abort) is a
    record with no survivors, not an exception.
    """
    started = time.perf_counter()
    epoch = time.monotonic() - parts.schedule.round_timeout
    parts.liveness.round_started = parts.liveness.now()
    schedule, admitted = parts.schedule, parts.admission.agents
    now.round = r
    before = now.model
    alive = [a for a in admitted if parts.liveness.alive(a) and a not in parts.admission.revoked]
    if len(alive) < schedule.min_fit_clients:
        # Too few agents showed life since their last deadline: rather than no round, the
        # ones that missed it get another chance (each may cost this one deadline again).
        late = sorted(
            a
            for a in admitted
            if a not in alive
            and a not in parts.admission.revoked
            and parts.liveness.alive(a, forgive_late=True)
        )
        alive += late[: schedule.min_fit_clients - len(alive)]
    if len(alive) < len(admitted):
        log.info("offline_agents_skipped", offline=sorted(set(admitted) - set(alive)))
    cohort = sample_cohort(
        alive,
        fraction=schedule.fraction_fit,
        min_clients=schedule.min_fit_clients,
        max_clients=schedule.max_fit_clients,
        rng=parts.rng,
        over_selection=schedule.over_selection,
    )
    needed = cohort_size(
        len(alive),
        fraction=schedule.fraction_fit,
        min_clients=schedule.min_fit_clients,
        max_clients=schedule.max_fit_clients,
    )
    log.info(
        "round_started",
        cohort_size=len(cohort),
        admitted=len(admitted),
        secure_aggregation=str(schedule.secure_aggregation),
    )
    if parts.observer is not None:
        parts.observer.round_started(r, cohort)
    parts.board.enter(RoundPhase.TRAINING, f"training ({len(cohort)} agents)")
    parts.board.changed()
    outcome = await parts.fit.run(r, cohort, before, quorum=needed)
    revoked = sorted(set(cohort) & parts.admission.revoked)
    dropouts = sorted(set(cohort) - set(outcome.survivors) - set(revoked))
    parts.admission.record_round(cohort, dropouts)
    await _missed(parts, parts.fit.late, epoch)
    if outcome.weights is not None:
        # the new arrays are let go layer by layer as their wire copy is made
        now.model = await asyncio.to_thread(GlobalState.taking, r, outcome.weights)
    now.model = await recorded(
        parts.ledger, now.model, round=r, cohort=cohort, survivors=outcome.survivors
    )
    if outcome.weights is not None:
        await publish_model(parts.outbox, now.model, round=r)
    elif outcome.failure is RoundFailure.NO_COHORT:
        log.warning("round_skipped", reason="not_enough_agents", admitted=len(admitted))
    else:
        log.error("round_failed", reason=str(outcome.failure), kept_version=before.version)
    log.info("round_aggregated", survivors=len(outcome.survivors), dropouts=len(dropouts))
    loss = accuracy = None
    eval_examples = 0
    eval_metrics: dict[str, float] = {}
    every = schedule.eval_every
    if (every and r % every == 0) or r == schedule.rounds:  # rounds = 0: every k only
        parts.board.enter(RoundPhase.EVALUATING, "evaluating")
        evaluators = frozenset(a for a in parts.admission.evaluators() if parts.liveness.alive(a))
        loss, accuracy, eval_examples = await parts.evaluation.run(r, now.model, evaluators)
        await _missed(parts, parts.evaluation.late, epoch)
        eval_metrics = dict(parts.evaluation.metrics)
    record = RoundRecord(
        round=r,
        cohort=cohort,
        survivors=outcome.survivors,
        dropouts=dropouts,
        num_examples=outcome.num_examples,
        train_loss=outcome.train_loss,
        accuracy=accuracy,
        loss=loss,
        eval_examples=eval_examples,
        seconds=time.perf_counter() - started,
        model_version=now.model.version,
        model_sha256=now.model.sha256,
        revoked=revoked,
        metrics=outcome.metrics,
        eval_metrics=eval_metrics,
        privacy=None if outcome.privacy is None else asdict(outcome.privacy),
    )
    _count(parts, record, outcome)
    return record


async def _missed(parts: RoundParts, late: frozenset[str], epoch: float) -> None:
    """Members waited for until a deadline passed: not waited for again until they show life
    (unless the bus reconnected after ``epoch`` or is down now: the broker lost messages)."""
    if late and (parts.reconnected_at() >= epoch or not await _connected(parts)):
        log.info("deadline_misses_forgiven", agents=sorted(late), reason="bus_reconnected")
        return
    if late:
        log.info("agents_missed_deadline", agents=sorted(late))
    for agent_id in late:
        if parts.liveness.seen_at.get(agent_id, float("-inf")) < parts.liveness.round_started:
            parts.liveness.missed(agent_id)  # no sign of life all round (a status would do)


async def _connected(parts: RoundParts) -> bool:
    if parts.connected is None:
        return True
    try:
        await parts.connected(0.05)  # returns at once while connected
    except TimeoutError:  # BusTimeoutError
        return False
    return True


def _count(parts: RoundParts, record: RoundRecord, outcome: Outcome) -> None:
    """The round in the metrics: its outcome, dropouts, duration, and the agents by state."""
    m = parts.metrics
    m.rounds.labels("completed" if outcome.failure is None else "failed").inc()
    m.dropouts.inc(len(record.dropouts))
    m.round_seconds.observe(record.seconds)
    states = [parts.liveness.state(a) for a in parts.admission.agents]
    for state in (Liveness.ONLINE, Liveness.OFFLINE, None):
        m.agents.labels(str(state or "unknown")).set(states.count(state))
