"""The topic table: every topic fedbus uses, who publishes on it and which kinds it carries.

This table is the code side of the message contract; ``topics/asyncapi.yaml`` is the document
side, and ``tests/test_contract.py`` keeps them equal. Templates use ``{federation}`` and
``{agent_id}`` placeholders; a concrete topic is built with ``TopicSpec.format``.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.messages.kinds import Kind
from agent.role import Role


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One topic of the contract.

    Attributes:
        name: a stable identifier (the AsyncAPI channel id).
        template: the canonical ``/`` topic with ``{federation}``/``{agent_id}`` placeholders.
        publisher: the role that publishes on it.
        kinds: the message kinds it may carry; anything else is dropped as ``wrong_topic``.
        retained: published with the MQTT retain flag.
        description: one line for the contract document.
    """

    name: str
    template: str
    publisher: Role
    kinds: frozenset[Kind]
    retained: bool
    description: str

    @property
    def per_agent(self) -> bool:
        """True when the last level is an agent id (its inbox, or its own publications)."""
        return self.template.endswith("/{agent_id}")

    def format(self, federation: str, agent_id: str | None = None, *, peer: str = "+") -> str:
        """The concrete topic. ``agent_id`` is required for per-agent topics; ``peer`` fills
        a ``{peer}`` level (the recipient of ``PEER``; ``+`` in a filter)."""
        if self.per_agent and agent_id is None:
            raise ValueError(f"topic {self.name} needs an agent_id")
        return self.template.format(federation=federation, agent_id=agent_id, peer=peer)

    def filter(self, federation: str) -> str:
        """A subscription filter matching this topic for every agent (``+`` for the id)."""
        return self.template.format(federation=federation, agent_id="+", peer="+")


JOIN = TopicSpec(
    "join",
    "fl/{federation}/join",
    Role.TRAINER,
    frozenset({Kind.JOIN}),
    False,
    "Agents ask to be admitted; re-sent after every reconnect until accepted.",
)
INBOX = TopicSpec(
    "inbox",
    "fl/{federation}/agent/{agent_id}",
    Role.AGGREGATOR,
    frozenset(
        {
            Kind.JOIN_ACCEPTED,
            Kind.JOIN_REJECTED,
            Kind.FIT_INS,
            Kind.MODEL_PARA,
            Kind.RELAY_KEYS,
            Kind.RELAY_SHARES,
            Kind.MANIFEST,
            Kind.CHUNK_ACK,
            Kind.RENEW_REPLY,
            Kind.LEDGER_RECORDS,
        }
    ),
    False,
    "One agent's inbox: admission, round assignment, the current model for a new agent, "
    "the SecAgg+ messages relayed to it, and the answer to its certificate renewal.",
)
GLOBAL_MODEL = TopicSpec(
    "global_model",
    "fl/{federation}/model_para/global",
    Role.AGGREGATOR,
    frozenset({Kind.MODEL_PARA, Kind.MANIFEST}),
    True,
    "The current global model; retained on MQTT so a late joiner gets it.",
)
UPDATE = TopicSpec(
    "update",
    "fl/{federation}/model_para/update/{agent_id}",
    Role.TRAINER,
    frozenset({Kind.MODEL_UPDATE, Kind.MASKED_INPUT, Kind.UPDATE_READY, Kind.MANIFEST}),
    False,
    "One agent's trained update for the current round (masked under SecAgg+; in async "
    "SecAgg+ first its update_ready).",
)
SECAGG_ADVERTISE = TopicSpec(
    "secagg_advertise_keys",
    "fl/{federation}/secagg/advertise_keys/{agent_id}",
    Role.TRAINER,
    frozenset({Kind.ADVERTISE_KEYS}),
    False,
    "SecAgg+: one agent's round public keys.",
)
SECAGG_SHARE = TopicSpec(
    "secagg_share_keys",
    "fl/{federation}/secagg/share_keys/{agent_id}",
    Role.TRAINER,
    frozenset({Kind.SHARE_KEYS}),
    False,
    "SecAgg+: one agent's encrypted Shamir shares, one per neighbour, for the aggregator to relay.",
)
SECAGG_UNMASK = TopicSpec(
    "secagg_unmask",
    "fl/{federation}/secagg/unmask/{agent_id}",
    Role.TRAINER,
    frozenset({Kind.UNMASK}),
    False,
    "SecAgg+: the shares one survivor reveals so the aggregator can unmask the sum.",
)
SECAGG_UNMASK_REQUEST = TopicSpec(
    "secagg_unmask_request",
    "fl/{federation}/secagg/unmask_request",
    Role.AGGREGATOR,
    frozenset({Kind.UNMASK_REQUEST}),
    False,
    "SecAgg+: who sent a masked input and who shared keys but did not, one broadcast to the "
    "whole cohort (the same body for every survivor; federation_status names them anyway).",
)
EVALUATE = TopicSpec(
    "evaluate",
    "fl/{federation}/evaluate",
    Role.AGGREGATOR,
    frozenset({Kind.EVALUATE}),
    False,
    "Federated evaluation request for a model version.",
)
METRICS = TopicSpec(
    "metrics",
    "fl/{federation}/metrics/{agent_id}",
    Role.TRAINER,
    frozenset({Kind.METRICS}),
    False,
    "One agent's evaluation result.",
)
FINISH = TopicSpec(
    "finish",
    "fl/{federation}/finish",
    Role.AGGREGATOR,
    frozenset({Kind.FINISH}),
    False,
    "The federation is done; agents stay up, idle.",
)
ENROLL = TopicSpec(
    "enroll",
    "fl/{federation}/enroll/{agent_id}",
    Role.TRAINER,
    frozenset({Kind.ENROLL}),
    False,
    "A device's enrollment request (CSR + one-time token); the only topic an unenrolled "
    "device may publish on.",
)
ENROLL_REPLY = TopicSpec(
    "enroll_reply",
    "fl/{federation}/enroll_reply/{agent_id}",
    Role.AGGREGATOR,
    frozenset({Kind.ENROLL_REPLY}),
    False,
    "The answer to one device's enrollment: its certificate and the CA, or why not.",
)

RENEW = TopicSpec(
    "renew",
    "fl/{federation}/renew/{agent_id}",
    Role.TRAINER,
    frozenset({Kind.RENEW}),
    False,
    "An enrolled agent's certificate renewal (a CSR), signed with the certificate it renews.",
)
LEDGER = TopicSpec(
    "ledger",
    "fl/{federation}/ledger/{agent_id}",
    Role.TRAINER,
    frozenset({Kind.LEDGER_REQUEST}),
    False,
    "A trainer that missed ledger records asks for the ones after its head (signed).",
)
STATUS = TopicSpec(
    "status",
    "fl/{federation}/status/{agent_id}",
    Role.TRAINER,
    frozenset({Kind.STATUS}),
    True,
    "One agent's liveness: online on connect and as a heartbeat, offline as its last will.",
)
FEDERATION_STATUS = TopicSpec(
    "federation_status",
    "fl/{federation}/federation_status",
    Role.AGGREGATOR,
    frozenset({Kind.FEDERATION_STATUS}),
    True,
    "The aggregator's summary: round, stage, agents online/offline, the last round.",
)
PEER = TopicSpec(
    "peer",
    "fl/{federation}/peer/{peer}/{agent_id}",
    Role.TRAINER,
    frozenset({Kind.PEER_HELLO, Kind.PEER_MODEL, Kind.MANIFEST}),
    False,
    "P2P averaging: one peer's key and models for one neighbour ({peer}, the recipient; "
    "{agent_id}, the sender).",
)

REVOCATIONS = TopicSpec(
    "revocations",
    "fl/{federation}/revocations",
    Role.AGGREGATOR,
    frozenset({Kind.REVOCATIONS}),
    True,
    "P2P: the federation's CRL and revoked agents, from the CA host; peers drop revoked "
    "senders; retained on MQTT, re-sent periodically for NATS.",
)

SECAGG_TOPICS: tuple[TopicSpec, ...] = (SECAGG_ADVERTISE, SECAGG_SHARE, SECAGG_UNMASK)
TOPICS: tuple[TopicSpec, ...] = (
    JOIN,
    INBOX,
    GLOBAL_MODEL,
    UPDATE,
    SECAGG_ADVERTISE,
    SECAGG_SHARE,
    SECAGG_UNMASK,
    SECAGG_UNMASK_REQUEST,
    EVALUATE,
    METRICS,
    FINISH,
    ENROLL,
    ENROLL_REPLY,
    RENEW,
    LEDGER,
    STATUS,
    FEDERATION_STATUS,
    PEER,
    REVOCATIONS,
)


def classify(topic: str, federation: str) -> tuple[TopicSpec, str | None] | None:
    """Find the spec a concrete topic belongs to, and its agent id for per-agent topics.

    Returns None for a topic outside the table or outside ``federation``.
    """
    levels = topic.split("/")
    for spec in TOPICS:
        template = spec.template.split("/")
        if len(template) != len(levels):
            continue
        agent_id: str | None = None
        for want, got in zip(template, levels, strict=True):
            if want == "{federation}":
                if got != federation:
                    break
            elif want == "{agent_id}":
                agent_id = got
            elif want == "{peer}":
                continue
            elif want != got:
                break
        else:
            return spec, agent_id
    return None
