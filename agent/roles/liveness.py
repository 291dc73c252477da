"""Liveness on the bus, without polling (ARCHITECTURE.md §2, ``status/{agent_id}``).

An agent publishes ``status: online`` (retained) when it connects and then every
``trainer.heartbeat`` seconds, with what it is doing; its last will, set on every connection,
is ``status: offline`` (retained), which the broker publishes when the connection dies (MQTT).
NATS has no will: the adapter publishes it on a clean close, and an agent whose heartbeats stop
is taken for offline after ``aggregator.liveness_timeout`` seconds. A clean stop publishes
``offline`` itself.

The aggregator's ``LivenessTracker`` keeps the latest status of each agent; cohorts are sampled only
from agents it believes alive, and a cohort member that goes offline mid-round stops being
waited for. Any verified message of an agent counts as a sign of life (``touch``, called by
the receive pipeline), not only its status; an agent that let a deadline pass without
answering (``missed``) is not alive until it shows life again, so a straggler or a silent
agent costs at most one deadline (Bonawitz et al., "Towards Federated Learning at Scale",
SysML 2019, §4: devices that do not report in time are dropped from the round).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.bus.base import LastWill
from agent.config import AgentConfig
from agent.messages import topics
from agent.messages.bodies import AgentStatus, AgentSummary, Liveness
from agent.messages.codec import encode


def status_will(config: AgentConfig) -> Callable[[], LastWill]:
    """The agent's last will, built (and signed, with identities on) for each connection."""
    credentials = None
    if config.identity.enabled:  # X.509 only with identities on (issue 15)
        from agent.identity.local import Credentials

        credentials = Credentials.load(
            config.identity, agent_id=config.agent_id, federation=config.federation
        )
    topic = topics.STATUS.format(config.federation, config.agent_id)

    def will() -> LastWill:
        payload = encode(
            AgentStatus(state=Liveness.OFFLINE, detail="connection lost"),
            federation=config.federation,
            round=0,
            sender=config.agent_id,
            signer=credentials.signer if credentials else None,
        )
        return LastWill(topic, payload, retain=True)

    return will


@dataclass(slots=True)
class Seen:
    """The latest status of one agent."""

    state: Liveness
    detail: str
    last_seen: float
    model_version: int | None = None
    cert_expires: float | None = None


class LivenessTracker:
    """Who is alive, from the agents' status messages.

    Args:
        timeout: seconds without any status after which an ``online`` agent counts as gone.
        clock: wall clock (tests pass their own).
    """

    def __init__(self, *, timeout: float, clock: Callable[[], float] = time.time) -> None:
        self.timeout = timeout
        self._clock = clock
        self.agents: dict[str, Seen] = {}
        #: agents that let a deadline pass since they last showed life
        self.late: set[str] = set()
        #: when each agent last showed life (any verified message or status), clock seconds
        self.seen_at: dict[str, float] = {}
        #: when the current round started (set by the round), clock seconds
        self.round_started = float("-inf")

    def now(self) -> float:
        return self._clock()

    def touch(self, agent_id: str) -> None:
        """A verified message from ``agent_id`` arrived: it is alive (a missed deadline is
        forgiven, the heartbeat timeout starts again). Its stated ``Liveness`` is kept: only
        a status message changes it."""
        self.late.discard(agent_id)
        self.seen_at[agent_id] = self._clock()
        seen = self.agents.get(agent_id)
        if seen is not None:
            seen.last_seen = self._clock()

    def missed(self, agent_id: str) -> None:
        """``agent_id`` did not answer before a deadline: not alive until it shows life."""
        self.late.add(agent_id)

    def update(self, agent_id: str, status: AgentStatus) -> bool:
        """Record a status; True when the agent's state (``Liveness``) changed."""
        self.late.discard(agent_id)
        self.seen_at[agent_id] = self._clock()
        before = self.agents.get(agent_id)
        self.agents[agent_id] = Seen(
            status.state, status.detail, self._clock(), status.model_version, status.cert_expires
        )
        return before is None or before.state != status.state

    def alive(self, agent_id: str, *, forgive_late: bool = False) -> bool:
        """False once the agent said offline, its heartbeats stopped, or it missed a deadline
        and has sent nothing since (unless ``forgive_late``); True when it never sent a status
        (an agent that does not publish one is judged by its answers)."""
        if agent_id in self.late and not forgive_late:
            return False
        seen = self.agents.get(agent_id)
        if seen is None:
            return True
        if seen.state is not Liveness.ONLINE:
            return False
        return self._clock() - seen.last_seen <= self.timeout

    def state(self, agent_id: str) -> Liveness | None:
        """``ONLINE`` while ``alive``, else ``OFFLINE``; None (unknown) when the agent never
        sent a status."""
        if agent_id not in self.agents:
            return None
        return Liveness.ONLINE if self.alive(agent_id) else Liveness.OFFLINE

    def summary(self, agent_id: str, *, admitted: bool) -> AgentSummary:
        seen = self.agents.get(agent_id)
        return AgentSummary(
            state=self.state(agent_id),
            detail=seen.detail if seen else "",
            last_seen=seen.last_seen if seen else None,
            admitted=admitted,
            cert_expires=seen.cert_expires if seen else None,
        )
