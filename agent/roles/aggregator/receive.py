"""What the aggregator does with each kind it receives: the listener table of its receive
pipeline (``runtime.listeners.Dispatcher``, which runs every check before a listener), and the
listeners that span its parts (metrics, status, chunk grants); the others are the parts' own
(``Admission.on_join``, ``CohortFit.on_update`` / ``on_secagg``, ``Buffered``'s in async
mode, the ledger replies)."""

from __future__ import annotations

import structlog

from agent.messages import topics
from agent.messages.bodies import AgentStatus, ChunkAck, EvaluateRes, Liveness
from agent.messages.envelope import Message
from agent.messages.kinds import Kind
from agent.messages.topics import classify
from agent.role import Role
from agent.roles.aggregator.buffered import Buffered
from agent.roles.aggregator.round import RoundParts
from agent.runtime.listeners import ListenerRegistry, RoundPolicy
from agent.runtime.reassembly import Transfer

log = structlog.get_logger(__name__)

#: The stage messages of a synchronous SecAgg+ round (and of an async buffer's).
SECAGG_KINDS = (Kind.ADVERTISE_KEYS, Kind.SHARE_KEYS, Kind.MASKED_INPUT, Kind.UNMASK)


class AggregatorListeners:
    """The listeners of one aggregator over its ``parts`` (``buffered``: async mode's)."""

    def __init__(self, parts: RoundParts, *, federation: str, buffered: Buffered | None) -> None:
        self._parts, self._fed, self._buffered = parts, federation, buffered

    def registry(self) -> ListenerRegistry:
        """Every kind the aggregator takes, with the rounds it takes it from."""
        registry = ListenerRegistry()
        registry.register(Kind.JOIN, self._parts.admission.on_join, rounds=RoundPolicy.ANY)
        if self._buffered is None:
            registry.register(
                Kind.MODEL_UPDATE, self._parts.fit.on_update, rounds=RoundPolicy.CURRENT
            )
            registry.stream(Kind.MODEL_UPDATE, self._parts.fit.stream_update)  # folded as it comes
        else:  # FedBuff: updates of older versions, and update_ready
            self._buffered.register(registry)
        registry.register(Kind.METRICS, self.on_metrics, rounds=RoundPolicy.CURRENT)
        registry.register(Kind.STATUS, self.on_status, rounds=RoundPolicy.ANY)
        for kind in SECAGG_KINDS:
            registry.register(kind, self._parts.fit.on_secagg, rounds=RoundPolicy.CURRENT)
        self._parts.serve_ledger(registry)  # trainers that missed records fetch them
        return registry

    async def on_metrics(self, message: Message[EvaluateRes]) -> None:
        """``metrics``: an admitted agent's evaluation result."""
        if message.sender not in self._parts.admission.agents:
            log.warning("metrics_rejected", agent=message.sender, reason="not_admitted")
            return
        self._parts.evaluation.on_metrics(message.sender, message.body)

    async def on_chunk(self, transfer: Transfer, kept: int) -> None:
        """Tell a trainer's chunked upload its new grant (``runtime.credit_pool``)."""
        where = classify(transfer.topic, self._fed)
        if where is None or where[0].publisher is not Role.TRAINER:
            return
        ack = ChunkAck(transfer=transfer.manifest.transfer, received=kept, grant=transfer.grant)
        await self._parts.outbox.try_send(
            topics.INBOX, ack, round=transfer.envelope.round, agent_id=transfer.sender
        )

    async def on_status(self, message: Message[AgentStatus]) -> None:
        """``status``: liveness; an agent going offline is a dropout of what it was in."""
        sender, body = message.sender, message.body
        if not self._parts.liveness.update(sender, body):
            return
        log.info("agent_status", agent=sender, state=str(body.state), detail=body.detail)
        if body.state is Liveness.OFFLINE:
            self._parts.fit.on_offline(sender)
            self._parts.evaluation.forget(sender)
        self._parts.board.changed()
