"""One SecAgg+ round over the bus, aggregator side (ARCHITECTURE.md §5).

``SecureRound.run`` walks the server stages of ``agent.secagg.server``: it collects each
stage's messages until every expected client answered or the stage deadline passed, then
relays what the next stage needs to each client's inbox (one message per recipient, however
many peers' keys or shares it carries; the unmask request, the same for everyone, as one
broadcast), so every client sees the view the aggregator holds. The masked inputs are summed
as they arrive; the unmask (Shamir reconstruction and mask removal) runs in a worker thread.

=================  =============================  ======================================
stage              clients send (topic)           aggregator relays (inbox, or broadcast)
=================  =============================  ======================================
advertise_keys     advertise_keys (secagg/…)      relay_keys: neighbours' public keys
share_keys         share_keys (secagg/…)          relay_shares: ciphertexts for the agent
collect            masked_input (update/{id})     unmask_request: survivors, dropouts
                                                  (one broadcast, secagg/unmask_request)
unmask             unmask (secagg/…)              —
=================  =============================  ======================================
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import structlog

from agent.errors import DecodeError
from agent.messages import topics
from agent.messages.bodies import (
    AdvertiseKeys,
    Body,
    MaskedInput,
    PeerKeys,
    RelayKeys,
    RelayShares,
    SecAggSetup,
    ShareKeys,
    Unmask,
    UnmaskRequest,
)
from agent.messages.tensors import to_array
from agent.roles.aggregator.private_update import SecureLayout
from agent.roles.aggregator.stage_log import StageLog
from agent.runtime.metrics import Metrics
from agent.runtime.outbox import Outbox
from agent.runtime.tasks import task_group
from agent.secagg import server
from agent.secagg.state import PublicKeys, RevealedShares, Setup, Stage

log = structlog.get_logger(__name__)
_T = TypeVar("_T")


def setup_body(
    setup: Setup, *, stage_timeout: float, layout: SecureLayout | None = None
) -> SecAggSetup:
    """The ``secagg`` field of a ``fit_ins``: what every cohort member needs to take part
    (with ``layout``: the secure-metric slots and distributed DP's noise settings)."""
    p = setup.params
    plan = layout.plan if layout is not None else None
    return SecAggSetup(
        cohort=list(setup.cohort),
        num_neighbours=p.num_neighbours,
        threshold=p.threshold,
        clipping_range=p.clipping_range,
        quantization_bits=p.quantization_bits,
        ring_bits=p.ring_bits,
        max_weight=p.max_weight,
        graph_seed=setup.graph_seed,
        length=setup.length,
        stage_timeout=stage_timeout,
        metrics=list(layout.slots) if layout is not None else [],
        metric_scale=plan.metric_scale if plan is not None else 0.0,
        noise_stddev=plan.noise_stddev if plan is not None else 0.0,
        min_survivors=plan.min_survivors if plan is not None else 0,
    )


class SecureRound:
    """The aggregator's side of one SecAgg+ round.

    Args:
        outbox: sends the relays.
        setup: the announced round (cohort, parameters, graph seed, d).
        stage_timeout: seconds each of advertise_keys, share_keys and unmask waits.
        input_deadline: ``time.monotonic()`` by which masked inputs must have arrived
            (None: trained before the round, async SecAgg+: ``stage_timeout``).
        model_version: the model the masked inputs must be trained from.
        metrics: observes each stage's duration (``stage_seconds``, by stage).
        quorum: the advertise and collect stages close once this many answered (over-
            selection, Bonawitz et al. 2019; None: every member or the deadline).
        on_stage: called with each stage's name as it closes (the aggregator persists it).
    """

    def __init__(
        self,
        *,
        outbox: Outbox,
        setup: Setup,
        stage_timeout: float,
        input_deadline: float | None,
        model_version: int,
        metrics: Metrics,
        quorum: int | None = None,
        on_stage: Callable[[str], None] | None = None,
    ) -> None:
        self._outbox = outbox
        self._quorum = quorum
        #: members waited for until a stage deadline passed without their answer
        self.late: set[str] = set()
        #: members that went offline in this round: no later stage waits for them
        self._offline: set[str] = set()
        self._on_stage = on_stage
        self._metrics = metrics
        self._round = setup.context.round
        self._stage_timeout = stage_timeout
        self._input_deadline = input_deadline
        self._model_version = model_version
        self.state = server.setup(setup)
        server.open_advertise(self.state)
        self._expected: frozenset[str] = frozenset(setup.cohort)
        self._answered: set[str] = set()
        #: expected members not yet answered (so a stage's completion check is O(1))
        self._waiting: set[str] = set(self._expected)
        self._everyone = asyncio.Event()
        self._timed_out = False
        self._closed = False
        self._stage_started = time.monotonic()
        self._stage: StageLog | None = None

    async def run(self) -> server.Aggregate:
        """Run the stages after the cohort got its ``fit_ins``.

        Each stage ends in one ``secagg_stage_closed`` log line (``StageLog``): its seconds
        (collecting, closing, relaying), who was expected and answered, the relay messages
        and bytes sent, and the dropouts.

        Raises:
            SecAggAbortError: too few clients at some stage, or too few / bad shares.
        """
        state = self.state
        try:
            await self._collect(self._stage_timeout)
            keys = self._close(Stage.ADVERTISE_KEYS, server.close_advertise)
            # Expect the answers before relaying: the first may come back at once.
            self._expect(keys)
            await self._relay(
                keys,
                lambda peers: RelayKeys(
                    keys={v: PeerKeys(k.enc, k.mask) for v, k in peers.items()}
                ),
            )
            self._log_stage()
            await self._collect(self._stage_timeout)
            shares = self._close(Stage.SHARE_KEYS, server.close_share_keys)
            self._expect(shares)
            await self._relay(shares, lambda cts: RelayShares(ciphertexts=cts))
            self._log_stage()
            inputs = self._input_deadline  # None: held inputs, a stage like the others
            await self._collect(
                self._stage_timeout if inputs is None else max(0.0, inputs - time.monotonic())
            )
            survivors, dropped = self._close(Stage.COLLECT_MASKED_INPUT, server.close_collect)
            self._expect(survivors)
            await self._broadcast(UnmaskRequest(survivors=survivors, dropped=dropped))
            self._log_stage()
            await self._collect(self._stage_timeout)
        finally:
            self._closed = True
        record = self._closing(Stage.UNMASK)
        result = await asyncio.to_thread(server.finish, state)
        self._closed_stage(record)
        self._log_stage()
        return result

    # -- handlers (called by the aggregator's listeners) ----------------------------------

    def on_advertise_keys(self, sender: str, body: AdvertiseKeys) -> None:
        public = PublicKeys(body.enc_key, body.mask_key)
        self._take(
            Stage.ADVERTISE_KEYS, sender, lambda: server.receive_keys(self.state, sender, public)
        )

    def on_share_keys(self, sender: str, body: ShareKeys) -> None:
        self._take(
            Stage.SHARE_KEYS,
            sender,
            lambda: server.receive_shares(self.state, sender, body.ciphertexts),
        )

    def on_masked_input(self, sender: str, body: MaskedInput) -> None:
        if body.model_version != self._model_version:
            log.warning("update_rejected", agent=sender, reason="wrong_model_version")
            return
        try:
            vector = to_array(body.vector)
        except DecodeError:
            log.warning("update_rejected", agent=sender, reason="malformed_vector")
            return
        self._take(
            Stage.COLLECT_MASKED_INPUT,
            sender,
            lambda: server.receive_masked_input(self.state, sender, vector),
        )

    def on_unmask(self, sender: str, body: Unmask) -> None:
        revealed = RevealedShares(dict(body.self_seed), dict(body.mask_key))
        self._take(
            Stage.UNMASK, sender, lambda: server.receive_unmask(self.state, sender, revealed)
        )

    def on_offline(self, agent_id: str) -> None:
        """An agent said it went offline: stop waiting for it in this stage and the rest
        (its SecAgg+ state went with its connected life, even if it answered so far)."""
        self._offline.add(agent_id)
        if agent_id in self._waiting:
            self._expected = self._expected - {agent_id}
            self._waiting.discard(agent_id)
            if not self._waiting:
                self._everyone.set()

    # -- internals ------------------------------------------------------------------------

    def _take(self, stage: Stage, sender: str, receive: Callable[[], bool]) -> None:
        """Hand a message to the server state if it belongs to the stage being collected."""
        if self._closed or self.state.stage is not stage:
            log.info(
                "secagg_message_ignored", agent=sender, stage=str(stage), reason="stage_closed"
            )
            return
        if not receive():
            log.warning(
                "secagg_message_ignored", agent=sender, stage=str(stage), reason="not_expected"
            )
            return
        self._answered.add(sender)
        self._waiting.discard(sender)
        enough = (
            self._quorum is not None
            and stage in (Stage.ADVERTISE_KEYS, Stage.COLLECT_MASKED_INPUT)
            and len(self._answered) >= self._quorum
        )
        if enough or not self._waiting:
            self._everyone.set()

    def _expect(self, who: Iterable[str]) -> None:
        self._expected = frozenset(who) - self._offline
        self._answered = set()
        self._waiting = set(self._expected)
        self._everyone.clear()

    async def _collect(self, seconds: float) -> None:
        """Wait until every expected client answered, or ``seconds``."""
        self._timed_out = False
        if not self._waiting:
            return
        try:
            async with asyncio.timeout(seconds):
                await self._everyone.wait()
        except TimeoutError:
            self._timed_out = True
            self.late |= self._waiting

    def _close(self, stage: Stage, close: Callable[[server.ServerState], _T]) -> _T:
        """End ``stage`` with the server's ``close`` function (its time counted apart)."""
        record = self._closing(stage)
        out = close(self.state)
        self._closed_stage(record)
        return out

    def _closing(self, stage: Stage) -> StageLog:
        """The stage's collecting is over: observe it, and open its log record."""
        now = time.monotonic()
        self._metrics.stage_seconds.labels(str(stage)).observe(now - self._stage_started)
        self._stage = record = StageLog(stage, self._stage_started, len(self._expected))
        record.collect_seconds = now - self._stage_started
        record.answered, record.timed_out = len(self._answered), self._timed_out
        return record

    def _closed_stage(self, record: StageLog) -> None:
        record.close_seconds = time.monotonic() - record.started - record.collect_seconds
        if self._on_stage is not None:
            self._on_stage(str(record.stage))

    async def _relay(self, per_agent: Mapping[str, Any], build: Callable[[Any], Body]) -> None:
        """Send each agent its relay body (concurrently; each QoS 1 publish is acknowledged):
        one message per recipient, however many peers' keys or shares it carries."""
        started = time.monotonic()
        sizes: list[int | None] = []

        async def one(agent_id: str, body: Body) -> None:
            size = await self._outbox.try_send(
                topics.INBOX, body, round=self._round, agent_id=agent_id
            )
            sizes.append(size)

        async with task_group() as tg:
            for agent_id, value in per_agent.items():
                tg.create_task(one(agent_id, build(value)))
        if self._stage is not None:
            self._stage.relayed_by(sizes, time.monotonic() - started)

    async def _broadcast(self, body: Body) -> None:
        """Send one body the whole cohort reads (``unmask_request``: the same for every
        survivor), as one publish instead of one per member."""
        started = time.monotonic()
        size = await self._outbox.try_send(topics.SECAGG_UNMASK_REQUEST, body, round=self._round)
        if self._stage is not None:
            self._stage.relayed_by([size], time.monotonic() - started)

    def _log_stage(self) -> None:
        record, self._stage = self._stage, None
        now = time.monotonic()
        self._stage_started = now
        if record is not None:
            record.report(now, self.state.dropouts.get(record.stage, frozenset()))
