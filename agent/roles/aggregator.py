"""The aggregator role: admit agents, run rounds, aggregate, evaluate, finish.

Listeners (kind → handler, round policy):

=============  ==================  ========  =========================================
kind           topic               rounds    may send
=============  ==================  ========  =========================================
join           join                any       join_accepted/_rejected, model_para (inbox)
model_update   update/{agent_id}   current   —
metrics        metrics/{agent_id}  current   —
advertise_keys secagg/…/{id}       current   relay_keys (inbox)       } through the
share_keys     secagg/…/{id}       current   relay_shares (inbox)     } round's
masked_input   update/{agent_id}   current   unmask_request (inbox)   } SecureRound
unmask         secagg/…/{id}       current   —                        }
=============  ==================  ========  =========================================

A round (DESIGN.md §4): sample a cohort from the admitted agents, send each member a
``fit_ins`` naming the current model, wait until every member delivered or ``round_timeout``
passed (dropouts are normal), aggregate the survivors with the strategy, broadcast the new
model (retained on MQTT), evaluate every ``eval_every`` rounds, persist the round atomically.

With ``secure_aggregation = "secagg+"`` the fit part is a SecAgg+ round
(``agent.roles.secure_round``): the aggregator learns only the survivors' weighted sum of
model deltas and applies their weighted mean (FedAvg; a custom ``strategy`` sees no
individual result and is not used). An aborted secure round keeps the model in force.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.atomic import write_json
from agent.bus.base import Bus
from agent.config import AgentConfig, SecureAggregation
from agent.errors import ConfigError, IdentityError, RoundError, SecAggAbortError
from agent.identity.local import Credentials
from agent.messages import topics
from agent.messages.bodies import (
    AdvertiseKeys,
    AgentStatus,
    EvaluateRes,
    FederationStatus,
    Finish,
    FitIns,
    GlobalModel,
    JoinAccepted,
    JoinRejected,
    JoinRequest,
    MaskedInput,
    ModelUpdate,
    RoundSummary,
    ShareKeys,
    Unmask,
)
from agent.messages.envelope import Message
from agent.messages.kinds import Kind
from agent.plugin.api import Weights
from agent.role import Identity, Role
from agent.roles.cohort import sample_cohort
from agent.roles.evaluation import FederatedEvaluation
from agent.roles.liveness import Liveness
from agent.roles.plain_round import PlainRound
from agent.roles.records import AgentRecord, GlobalState, RoundObserver, RoundRecord, RunSummary
from agent.roles.secure_round import SecureRound, setup_body
from agent.runtime import metrics
from agent.runtime.listeners import Dispatcher, ListenerRegistry, RoundPolicy, Security
from agent.runtime.outbox import Outbox
from agent.runtime.tasks import task_group
from agent.secagg.keys import RoundContext
from agent.secagg.state import Setup
from agent.secagg.vector import flatten, size_of, unflatten
from agent.state import write_weights
from agent.strategy.fedavg import ClientResult, FedAvg, Strategy, weighted_mean

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the fit part of a round produced: the new weights (None: keep the model)."""

    weights: Weights | None = None
    survivors: list[str] = field(default_factory=list)
    num_examples: int = 0
    train_loss: float = math.nan
    failure: str = "no_cohort"


class Aggregator:
    """The aggregator role over one ``bus``.

    Args:
        config: the agent config (``role = "aggregator"``), its ``[aggregator]`` table used.
        bus: a bus that is entered (connected or connecting).
        plugin_name: agents must join with this plugin.
        initial_weights: the model of round 0.
        strategy: how survivors' results become the next model (default FedAvg).
        observer: called with every ``RoundRecord``.
        revoked: with identities on, called for every verified sender; True refuses its
            messages (``agent.runtime.node.enrolled_check`` asks the registry).
    """

    def __init__(
        self,
        *,
        config: AgentConfig,
        bus: Bus,
        plugin_name: str,
        initial_weights: Weights,
        strategy: Strategy | None = None,
        observer: RoundObserver | None = None,
        revoked: Callable[[Identity], bool] | None = None,
    ) -> None:
        self._config = config
        self._schedule = config.aggregator
        self._bus = bus
        self._fed = config.federation
        self._plugin_name = plugin_name
        self._strategy = strategy or FedAvg()
        self._observer = observer
        credentials = (
            Credentials.load(config.identity, agent_id=config.agent_id, federation=self._fed)
            if config.identity.enabled
            else None
        )
        if credentials is not None and credentials.identity.role is not Role.AGGREGATOR:
            raise IdentityError("wrong_identity", "the aggregator needs an aggregator certificate")
        self._outbox = Outbox(
            bus,
            federation=self._fed,
            sender=config.agent_id,
            signer=credentials.signer if credentials else None,
        )
        # A fresh sealing key per run: agents seal their updates to it (HPKE).
        self._seal_key = X25519PrivateKey.generate() if credentials else None
        self._state_dir = config.state_dir
        self._rng = random.Random(self._schedule.seed)
        self.round = 0
        self.global_state = GlobalState.of(0, initial_weights)
        self.agents: dict[str, AgentRecord] = {}
        self._enough_agents = asyncio.Event()
        self._cohort: frozenset[str] = frozenset()
        self._plain: PlainRound | None = None
        self._evaluation = FederatedEvaluation(
            self._outbox, timeout=self._schedule.eval_timeout, config=self._schedule.eval_config
        )
        self._secure: SecureRound | None = None
        #: set once the broker session is up with our subscriptions (systemd READY=1)
        self.ready = asyncio.Event()
        #: what the aggregator is doing, for humans (systemd STATUS=, fedbus status)
        self.status = "starting"
        self.liveness = Liveness(timeout=self._schedule.liveness_timeout)
        self._status_changed = asyncio.Event()
        self._finished = False
        self._last_record: RoundRecord | None = None
        registry = ListenerRegistry()
        registry.register(Kind.JOIN, self._on_join, rounds=RoundPolicy.ANY)
        registry.register(Kind.MODEL_UPDATE, self._on_update, rounds=RoundPolicy.CURRENT)
        registry.register(Kind.METRICS, self._on_metrics, rounds=RoundPolicy.CURRENT)
        registry.register(Kind.STATUS, self._on_status, rounds=RoundPolicy.ANY)
        for kind in (Kind.ADVERTISE_KEYS, Kind.SHARE_KEYS, Kind.MASKED_INPUT, Kind.UNMASK):
            registry.register(kind, self._on_secagg, rounds=RoundPolicy.CURRENT)
        self.dispatcher = Dispatcher(
            federation=self._fed,
            registry=registry,
            current_round=lambda: self.round,
            max_payload=config.max_payload,
            security=(
                Security(credentials.verifier(revoked=revoked), unseal_key=self._seal_key)
                if credentials
                else None
            ),
        )

    async def run(self) -> RunSummary:
        """Run the whole schedule and send ``finish``. Returns the run's records.

        Raises:
            RoundError: fewer than ``min_fit_clients`` agents joined within ``join_timeout``.
        """
        for spec in (
            topics.JOIN,
            topics.UPDATE,
            topics.METRICS,
            topics.STATUS,
            *topics.SECAGG_TOPICS,
        ):
            await self._bus.subscribe(spec.filter(self._fed))
        structlog.contextvars.bind_contextvars(federation=self._fed, role="aggregator")
        async with task_group() as tg:
            receiver = tg.create_task(self.dispatcher.run(self._bus), name="aggregator-receive")
            marker = tg.create_task(self._mark_ready(), name="aggregator-ready")
            reporter = tg.create_task(self._report_status(), name="aggregator-status")
            try:
                return await self._federate()
            finally:
                receiver.cancel()
                marker.cancel()
                reporter.cancel()

    async def _mark_ready(self) -> None:
        await self._bus.wait_connected()
        self.ready.set()

    async def _federate(self) -> RunSummary:
        await self._persist_model(self.global_state, self._state_dir / "rounds" / "0000")
        await self._wait_for_agents()
        await self._publish_model()
        records: list[RoundRecord] = []
        for r in range(1, self._schedule.rounds + 1):
            with structlog.contextvars.bound_contextvars(round=r):
                record = await self._run_round(r)
            records.append(record)
            await asyncio.to_thread(
                write_json, self._state_dir / "metrics.json", [x.to_dict() for x in records]
            )
            if self._observer is not None:
                self._observer.round_finished(record)
        state = self.global_state
        self._finished = True  # joins from now on belong to the next run's aggregator
        await self._outbox.try_send(
            topics.FINISH,
            Finish(reason="completed", final_version=state.version, model_sha256=state.sha256),
            round=self.round,
        )
        self.status = f"finished after {len(records)} rounds"
        log.info("federation_finished", rounds=len(records), final_version=state.version)
        return RunSummary(records, state.version, state.sha256)

    async def _wait_for_agents(self) -> None:
        wanted = self._schedule.min_available_clients
        self.status = f"waiting for {wanted} agents"
        log.info("waiting_for_agents", wanted=wanted, timeout=self._schedule.join_timeout)
        try:
            async with asyncio.timeout(self._schedule.join_timeout):
                await self._enough_agents.wait()
        except TimeoutError:
            if len(self.agents) < self._schedule.min_fit_clients:
                raise RoundError(
                    f"only {len(self.agents)} agent(s) joined within "
                    f"{self._schedule.join_timeout} s; at least {self._schedule.min_fit_clients}"
                    " are needed"
                ) from None
            log.warning("starting_with_fewer_agents", admitted=len(self.agents), wanted=wanted)

    # -- one round ----------------------------------------------------------------------

    async def _run_round(self, r: int) -> RoundRecord:
        started = time.perf_counter()
        self.round = r
        before = self.global_state
        alive = [a for a in self.agents if self.liveness.alive(a)]
        if len(alive) < len(self.agents):
            log.info("offline_agents_skipped", offline=sorted(set(self.agents) - set(alive)))
        cohort = sample_cohort(
            alive,
            fraction=self._schedule.fraction_fit,
            min_clients=self._schedule.min_fit_clients,
            max_clients=self._schedule.max_fit_clients,
            rng=self._rng,
        )
        self._cohort = frozenset(cohort)
        secure = self._schedule.secure_aggregation is SecureAggregation.SECAGG_PLUS
        log.info(
            "round_started",
            cohort_size=len(cohort),
            admitted=len(self.agents),
            secure_aggregation=str(self._schedule.secure_aggregation),
        )
        if self._observer is not None:
            self._observer.round_started(r, cohort)
        self._status_changed.set()
        self.status = f"round {r}: training ({len(cohort)} agents)"
        if not cohort:
            log.warning("round_skipped", reason="not_enough_agents", admitted=len(self.agents))
            outcome = Outcome()
        elif secure:
            outcome = await self._fit_secure(r, cohort, before)
        else:
            outcome = await self._fit_plain(r, cohort, before)
        survivors = outcome.survivors
        dropouts = sorted(self._cohort - set(survivors))
        for agent_id in self._cohort:
            if agent_id in self.agents:
                self.agents[agent_id].missed_last_round = agent_id in dropouts
        if outcome.weights is not None:
            self.global_state = await asyncio.to_thread(GlobalState.of, r, outcome.weights)
            await self._publish_model()
        elif cohort:
            log.error("round_failed", reason=outcome.failure, kept_version=before.version)
        log.info("round_aggregated", survivors=len(survivors), dropouts=len(dropouts))
        accuracy = loss = None
        eval_examples = 0
        every = self._schedule.eval_every
        if (every and r % every == 0) or r == self._schedule.rounds:
            loss, accuracy, eval_examples = await self._evaluate(r)
        record = RoundRecord(
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
            model_version=self.global_state.version,
            model_sha256=self.global_state.sha256,
        )
        round_dir = self._state_dir / "rounds" / f"{r:04d}"
        await self._persist_model(self.global_state, round_dir)
        await asyncio.to_thread(write_json, round_dir / "metrics.json", record.to_dict())
        log.info(
            "round_finished",
            accuracy=accuracy,
            loss=loss,
            seconds=round(record.seconds, 3),
            survivors=len(survivors),
        )
        self._last_record = record
        self._status_changed.set()
        metrics.ROUNDS.labels("completed" if outcome.weights is not None else "failed").inc()
        metrics.DROPOUTS.inc(len(dropouts))
        metrics.ROUND_SECONDS.observe(record.seconds)
        for state in ("online", "offline", "unknown"):
            metrics.AGENTS.labels(state).set(
                sum(1 for a in self.agents if self.liveness.state(a) == state)
            )
        return record

    async def _send_fit_ins(self, r: int, cohort: Sequence[str], ins: FitIns) -> None:
        # Concurrently: each QoS 1 publish waits for its broker acknowledgement.
        async with task_group() as tg:
            for agent_id in cohort:
                tg.create_task(self._outbox.try_send(topics.INBOX, ins, round=r, agent_id=agent_id))

    async def _fit_plain(self, r: int, cohort: Sequence[str], before: GlobalState) -> Outcome:
        """Updates in the clear: wait for every member or the deadline, then the strategy."""
        ins = FitIns(
            model_version=before.version,
            model_sha256=before.sha256,
            deadline=self._schedule.round_timeout,
            config=self._schedule.fit_config,
        )
        started = time.monotonic()
        self._plain = PlainRound(cohort=frozenset(cohort), model=before, alive=self.liveness.alive)
        try:
            await self._send_fit_ins(r, cohort, ins)
            results = await self._plain.wait(self._schedule.round_timeout)
        finally:
            self._plain = None
        metrics.STAGE_SECONDS.labels("fit").observe(time.monotonic() - started)
        if not results:
            return Outcome(failure="no_update_arrived")
        weights = await asyncio.to_thread(self._strategy.aggregate, before.weights, results)
        return Outcome(
            weights=weights,
            survivors=[x.agent_id for x in results],
            num_examples=sum(x.num_examples for x in results),
            train_loss=_weighted_metric(results, "train_loss"),
        )

    async def _fit_secure(self, r: int, cohort: Sequence[str], before: GlobalState) -> Outcome:
        """SecAgg+: the aggregator learns only the survivors' weighted sum of model deltas;
        the new model is the current one plus their weighted mean (FedAvg)."""
        settings = self._schedule.secagg
        try:
            params = settings.params(len(cohort))
        except ConfigError as exc:
            log.error("secagg_not_possible", error=str(exc))  # noqa: TRY400 - expected, no traceback
            return Outcome(failure="secagg_parameters")
        setup = Setup(
            RoundContext(self._fed, r),
            params,
            tuple(sorted(cohort)),
            os.urandom(32),
            size_of(before.weights),
        )
        self._secure = SecureRound(
            outbox=self._outbox,
            setup=setup,
            stage_timeout=settings.stage_timeout,
            input_deadline=time.monotonic() + self._schedule.round_timeout,
            model_version=before.version,
        )
        ins = FitIns(
            model_version=before.version,
            model_sha256=before.sha256,
            deadline=self._schedule.round_timeout,
            config=self._schedule.fit_config,
            secagg=setup_body(setup, stage_timeout=settings.stage_timeout),
        )
        log.info(
            "secagg_round",
            neighbours=params.num_neighbours,
            threshold=params.threshold,
            bits=params.quantization_bits,
            ring_bits=params.ring_bits,
        )
        try:
            await self._send_fit_ins(r, cohort, ins)
            aggregate = await self._secure.run()
        except SecAggAbortError as exc:
            log.error("secagg_aborted", reason=exc.reason, error=str(exc))  # noqa: TRY400
            return Outcome(failure=f"secagg_{exc.reason}")
        finally:
            self._secure = None
        current = before.weights
        weights = await asyncio.to_thread(
            lambda: unflatten(flatten(current) + aggregate.mean, current)
        )
        return Outcome(
            weights=weights,
            survivors=list(aggregate.survivors),
            num_examples=aggregate.total_weight,
        )

    async def _evaluate(self, r: int) -> tuple[float | None, float | None, int]:
        """Federated evaluation of the current model on the agents that answered last round:
        (loss, accuracy, examples)."""
        self.status = f"round {r}: evaluating"
        evaluators = frozenset(a for a, rec in self.agents.items() if not rec.missed_last_round)
        return await self._evaluation.run(r, self.global_state, evaluators)

    async def _publish_model(self, agent_id: str | None = None) -> None:
        state = self.global_state
        body = GlobalModel(version=state.version, sha256=state.sha256, tensors=state.tensors)
        spec = topics.GLOBAL_MODEL if agent_id is None else topics.INBOX
        size = await self._outbox.try_send(spec, body, round=self.round, agent_id=agent_id)
        if size is not None:
            log.info("model_published", version=state.version, size=size, to=agent_id or "all")

    async def _persist_model(self, state: GlobalState, round_dir: Path) -> None:
        await asyncio.to_thread(write_weights, round_dir / "model.npz", state.weights)
        await asyncio.to_thread(write_weights, self._state_dir / "global_model.npz", state.weights)

    # -- listeners ----------------------------------------------------------------------

    async def _on_join(self, message: Message[JoinRequest]) -> None:
        body = message.body
        if self._finished:
            # Admitting it now would leave it "admitted" by a run that is over: it would not
            # join the next run's aggregator.
            log.info("join_ignored", agent=body.agent_id, reason="run_finished")
            return
        if body.agent_id != message.sender:
            log.warning("join_refused", reason="sender_mismatch", sender=message.sender)
            return
        if body.plugin != self._plugin_name:
            reason = f"this federation trains plugin {self._plugin_name!r}, not {body.plugin!r}"
            await self._outbox.try_send(
                topics.INBOX,
                JoinRejected(agent_id=body.agent_id, reason=reason),
                round=self.round,
                agent_id=body.agent_id,
            )
            log.warning("join_refused", agent=body.agent_id, reason="plugin_mismatch")
            return
        known = body.agent_id in self.agents
        self.agents[body.agent_id] = AgentRecord(body.num_examples, time.time())
        seal_key = (
            self._seal_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            if self._seal_key is not None
            else None
        )
        await self._outbox.try_send(
            topics.INBOX,
            JoinAccepted(agent_id=body.agent_id, round=self.round, seal_key=seal_key),
            round=self.round,
            agent_id=body.agent_id,
        )
        await self._publish_model(agent_id=body.agent_id)
        log.info("agent_admitted", agent=body.agent_id, rejoin=known, admitted=len(self.agents))
        if len(self.agents) >= self._schedule.min_available_clients:
            self._enough_agents.set()

    async def _on_update(self, message: Message[ModelUpdate]) -> None:
        if self._secure is not None:
            log.warning("update_rejected", agent=message.sender, reason="plaintext_in_secure_round")
        elif self._plain is None:
            log.warning("update_rejected", agent=message.sender, reason="no_round_open")
        else:
            self._plain.on_update(message.sender, message.body)

    async def _on_secagg(self, message: Message[Any]) -> None:
        secure, sender, body = self._secure, message.sender, message.body
        if secure is None:
            log.warning(
                "secagg_message_ignored",
                agent=sender,
                kind=str(message.kind),
                reason="no_secure_round",
            )
        elif isinstance(body, AdvertiseKeys):
            secure.on_advertise_keys(sender, body)
        elif isinstance(body, ShareKeys):
            secure.on_share_keys(sender, body)
        elif isinstance(body, MaskedInput):
            secure.on_masked_input(sender, body)
        elif isinstance(body, Unmask):
            secure.on_unmask(sender, body)

    async def _on_status(self, message: Message[AgentStatus]) -> None:
        sender, body = message.sender, message.body
        if not self.liveness.update(sender, body):
            return
        log.info("agent_status", agent=sender, state=body.state, detail=body.detail)
        if body.state == "offline" and sender in self._cohort:
            if self._secure is not None:
                self._secure.on_offline(sender)
            elif self._plain is not None:
                self._plain.check_complete()
        self._status_changed.set()

    async def _report_status(self) -> None:
        """``federation_status`` (retained) on every change, and every ``status_every`` s
        for subscribers that missed it (NATS keeps nothing)."""
        while True:
            try:
                async with asyncio.timeout(self._schedule.status_every):
                    await self._status_changed.wait()
            except TimeoutError:
                pass
            self._status_changed.clear()
            await self._outbox.try_send(
                topics.FEDERATION_STATUS, self.federation_status(), round=self.round
            )

    def federation_status(self) -> FederationStatus:
        """The summary ``fedbus status`` shows."""
        known = set(self.agents) | set(self.liveness.agents)
        last = self._last_record
        return FederationStatus(
            round=self.round,
            stage=self.status,
            agents={a: self.liveness.summary(a, admitted=a in self.agents) for a in sorted(known)},
            last_round=None
            if last is None
            else RoundSummary(
                round=last.round,
                survivors=last.survivors,
                dropouts=last.dropouts,
                accuracy=last.accuracy,
                loss=last.loss,
                seconds=round(last.seconds, 3),
            ),
        )

    async def _on_metrics(self, message: Message[EvaluateRes]) -> None:
        if message.sender not in self.agents:
            log.warning("metrics_rejected", agent=message.sender, reason="not_admitted")
            return
        self._evaluation.on_metrics(message.sender, message.body)


def _weighted_metric(results: Sequence[ClientResult], key: str) -> float:
    return weighted_mean(
        [
            (float(v), x.num_examples)
            for x in results
            if isinstance(v := x.metrics.get(key), int | float)
        ]
    )
