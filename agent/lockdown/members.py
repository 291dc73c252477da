"""Who a locked-down broker admits: the input every broker config is rendered from."""

from __future__ import annotations

import datetime as dt
from dataclasses import KW_ONLY, dataclass
from pathlib import Path

from agent.errors import ConfigError, IdentityError
from agent.identity.certificates import NAME_RE
from agent.identity.registry import AgentStatus, Registry
from agent.lockdown.access import ENROLL_IDENTITY
from agent.role import Role

#: The aggregator's id when nobody names it (what ``fedbus demo`` uses).
DEFAULT_AGGREGATOR = "aggregator"


@dataclass(frozen=True, slots=True)
class Members:
    """The identities of one federation, as the broker must know them.

    Attributes:
        aggregator: the aggregator's agent id (its certificate's CN).
        agents: the enrolled, unrevoked trainers. mosquitto admits any CA-issued trainer
            through its patterns; nats-server only these.
        revoked: revoked trainers: stripped of every right on mosquitto (for a session still
            open), absent from nats-server's users.
        revoked_serials: ``(serial, revoked_at)`` of every revoked certificate (the CRL).
        enroll: the CN of the shared enrollment identity.

    Raises:
        ConfigError: a name outside ``[A-Za-z0-9_-]{1,64}``, an agent that is also the
            aggregator or the enroll identity (mosquitto knows an identity by its CN alone,
            so those names are reserved), or an agent both enrolled and revoked.
    """

    aggregator: str
    agents: tuple[str, ...] = ()
    _: KW_ONLY
    revoked: tuple[str, ...] = ()
    revoked_serials: tuple[tuple[int, dt.datetime], ...] = ()
    enroll: str = ENROLL_IDENTITY

    def __post_init__(self) -> None:
        for name in (self.aggregator, self.enroll, *self.agents, *self.revoked):
            if not NAME_RE.match(name):
                raise ConfigError(f"identity {name!r} must be 1-64 of [A-Za-z0-9_-]")
        if self.aggregator == self.enroll:
            raise ConfigError(f"the aggregator cannot be the enroll identity {self.enroll!r}")
        reserved = {self.aggregator, self.enroll}
        for name in (*self.agents, *self.revoked):
            if name in reserved:
                raise ConfigError(f"agent id {name!r} is reserved (aggregator or enroll identity)")
        both = sorted(set(self.agents) & set(self.revoked))
        if both:
            raise ConfigError(f"agents both enrolled and revoked: {', '.join(both)}")

    @property
    def trainers(self) -> list[str]:
        """The enrolled trainers, sorted and without duplicates."""
        return sorted(set(self.agents))

    @property
    def revoked_ids(self) -> list[str]:
        return sorted(set(self.revoked))

    def with_agents(self, *agent_ids: str) -> Members:
        """These members plus ``agent_ids`` as enrolled trainers."""
        return Members(
            self.aggregator,
            (*self.agents, *agent_ids),
            revoked=self.revoked,
            revoked_serials=self.revoked_serials,
            enroll=self.enroll,
        )

    def revoke(self, agent_id: str, *serials: int, when: dt.datetime | None = None) -> Members:
        """These members with ``agent_id`` moved from the trainers to the revoked, and its
        certificate ``serials`` added to the CRL."""
        at = when or dt.datetime.now(dt.UTC)
        return Members(
            self.aggregator,
            tuple(a for a in self.agents if a != agent_id),
            revoked=(*self.revoked, agent_id),
            revoked_serials=(*self.revoked_serials, *((serial, at) for serial in serials)),
            enroll=self.enroll,
        )


def members_from_registry(
    path: Path, *, aggregator: str | None = None, agents: tuple[str, ...] = ()
) -> Members:
    """The members recorded in the registry at ``path`` (``agent.identity.registry``):
    enrolled trainers, revoked trainers and every revoked serial, plus ``agents``.

    ``aggregator`` defaults to the registry's one enrolled aggregator, else to
    ``DEFAULT_AGGREGATOR`` (the id ``fedbus demo`` gives it).

    Raises:
        IdentityError: no registry at ``path`` (reason ``unreadable``).
        ConfigError: no ``aggregator`` given and the registry has several.
    """
    if not path.is_file():
        raise IdentityError("unreadable", f"no registry at {path}")
    with Registry.open(path) as registry:
        rows = registry.agents()
        serials = tuple(registry.revoked_serials())
    enrolled = [r for r in rows if r.status is AgentStatus.ENROLLED]
    if aggregator is None:
        found = [r.agent_id for r in enrolled if r.role is Role.AGGREGATOR]
        if len(found) > 1:
            raise ConfigError(
                f"the registry has {len(found)} enrolled aggregators ({', '.join(found)}); name one"
            )
        aggregator = found[0] if found else DEFAULT_AGGREGATOR
    trainers = tuple(r.agent_id for r in enrolled if r.role is Role.TRAINER)
    revoked = tuple(
        r.agent_id
        for r in rows
        if r.status is AgentStatus.REVOKED and r.role is Role.TRAINER and r.agent_id not in agents
    )
    return Members(aggregator, (*trainers, *agents), revoked=revoked, revoked_serials=serials)
