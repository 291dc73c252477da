"""Who may publish and subscribe where: the access model both broker configs are rendered from.

Three kinds of identity reach a locked-down broker, each by a client certificate issued by
the federation's CA (``agent.identity.ca``):

===============  ===========================================================================
identity         rights
===============  ===========================================================================
trainer          write its own per-agent topics (update, SecAgg+ stages, metrics, status)
                 and the shared ``join``; read its own inbox and the broadcasts (global
                 model, evaluate, finish)
aggregator       read and write everything under ``fl/{federation}/``
enroll           the shared identity of not-yet-enrolled devices: write
                 ``fl/{federation}/enroll/+``, read ``fl/{federation}/enroll_reply/+``
===============  ===========================================================================

A trainer's rules are derived from the topic table (:mod:`agent.messages.topics`): a topic
that agents publish is writable, one the aggregator publishes is readable, and a per-agent
topic (``.../{agent_id}``) only for the agent it names. The two enroll topics belong to the
enroll identity alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from agent.messages import topics
from agent.messages.topics import TopicSpec
from agent.role import Role

#: The certificate CN of the shared enrollment identity (role ``enroll``). Reserved: no agent
#: may be enrolled under this id.
ENROLL_IDENTITY = "enroll"

#: The topics only the enroll identity may touch (and the aggregator, which answers).
ENROLL_TOPICS: tuple[TopicSpec, ...] = (topics.ENROLL, topics.ENROLL_REPLY)


class Access(StrEnum):
    """What a rule allows on the topics its filter matches (mosquitto's ACL words)."""

    READ = "read"
    WRITE = "write"
    READWRITE = "readwrite"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class Rule:
    """One ACL entry: ``access`` on the canonical filter ``template``.

    ``template`` has a ``{federation}`` placeholder and, for per-agent topics, an
    ``{agent_id}`` one.
    """

    access: Access
    template: str

    @property
    def per_agent(self) -> bool:
        return "{agent_id}" in self.template

    def filter(self, federation: str, agent_id: str = "+") -> str:
        """The concrete filter; ``agent_id`` may be a concrete id, ``+`` or ``%u``."""
        return self.template.format(federation=federation, agent_id=agent_id)


#: P2P (``topics.PEER``): a peer writes to any neighbour as itself and reads what is for it.
PEER_RULES = (
    Rule(Access.WRITE, topics.PEER.template.replace("{peer}", "+")),
    Rule(
        Access.READ, topics.PEER.template.replace("{peer}", "{agent_id}").rsplit("/", 1)[0] + "/+"
    ),
)


def _trainer_rule(spec: TopicSpec) -> Rule:
    if spec.publisher is Role.TRAINER:
        return Rule(Access.WRITE, spec.template)
    return Rule(Access.READ, spec.template)


def trainer_rules() -> tuple[Rule, ...]:
    """Every right of a trainer, writes first, in table order (per-agent ones name itself)."""
    rules = [_trainer_rule(s) for s in topics.TOPICS if s not in (*ENROLL_TOPICS, topics.PEER)]
    rules += PEER_RULES
    return tuple(sorted(rules, key=lambda rule: rule.access is not Access.WRITE))


def enroll_rules() -> tuple[Rule, ...]:
    """The enroll identity's rights: send any device's request, read any device's reply.

    Any, because the identity is shared by every unenrolled device; what protects an
    enrollment is its one-time token, and a reply carries only public material
    (certificate, CA).
    """
    return (
        Rule(Access.WRITE, topics.ENROLL.filter("{federation}")),
        Rule(Access.READ, topics.ENROLL_REPLY.filter("{federation}")),
    )


def aggregator_rules() -> tuple[Rule, ...]:
    """The aggregator runs the federation: everything under ``fl/{federation}/``."""
    return (Rule(Access.READWRITE, "fl/{federation}/#"),)


def revoked_rules() -> tuple[Rule, ...]:
    """What a revoked identity keeps: nothing (its certificate may still hold a session)."""
    return (Rule(Access.DENY, "#"),)
