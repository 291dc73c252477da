"""The fits open in async mode (FedBuff, ``roles.aggregator.buffered``): which agent trains
from which model version, until when, and under which admission.

An agent is sent the newest version when free (``start``); its update (or, under SecAgg+,
its ``update_ready``) closes its fit (``close``): at most one fit per agent is open, so an
update nobody asked for, or one from another version than the one sent, is refused. A fit
is given up (``give_up``) when its deadline passes (``round_timeout`` after it was sent),
when its agent goes offline, is revoked, or is admitted again (it restarted and lost the
fit).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass

import structlog

from agent.errors import RefusedError
from agent.roles.aggregator.records import AgentRecord

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Slot:
    """One agent training: the version it was sent, when its fit expires (monotonic
    seconds), and its admission (a newer one: it restarted and lost the fit)."""

    base_version: int
    deadline: float
    admitted: AgentRecord | None


class OpenFits:
    """The agents training now, by agent id (``len``, ``in`` and iteration: their ids)."""

    def __init__(self) -> None:
        self._slots: dict[str, Slot] = {}

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self._slots

    def __iter__(self) -> Iterator[str]:
        return iter(self._slots)

    def get(self, agent_id: str) -> Slot | None:
        """``agent_id``'s open fit, or None."""
        return self._slots.get(agent_id)

    def versions(self) -> set[int]:
        """The model versions open fits train from (still needed for their deltas)."""
        return {s.base_version for s in self._slots.values()}

    def start(
        self,
        agents: Collection[str],
        *,
        version: int,
        deadline: float,
        admitted: Mapping[str, AgentRecord],
    ) -> None:
        """Fits of ``agents`` from model ``version``, open until ``deadline`` (monotonic)."""
        for agent_id in agents:
            self._slots[agent_id] = Slot(version, deadline, admitted.get(agent_id))

    def close(self, sender: str, base_version: int) -> Slot:
        """``sender``'s fit ended with an update trained from ``base_version``.

        Raises:
            RefusedError: ``not_training`` (no fit of ours is open for it) or
                ``wrong_model_version`` (it was sent another version); the fit stays open.
        """
        slot = self._slots.get(sender)
        if slot is None:
            raise RefusedError("not_training", "no fit of this aggregator is open for it")
        if base_version != slot.base_version:
            raise RefusedError("wrong_model_version", f"sent version {slot.base_version}")
        del self._slots[sender]
        return slot

    def give_up(
        self, *, now: float, alive: Collection[str], admitted: Mapping[str, AgentRecord]
    ) -> list[str]:
        """Close the fits past their deadline at ``now`` (monotonic), of agents not in
        ``alive``, or of agents admitted again since; logs ``fit_given_up`` with the reason
        (``late``, ``rejoined``, ``gone``). Returns the agents whose deadline passed."""
        late = []
        for agent_id, slot in list(self._slots.items()):
            expired = now >= slot.deadline
            rejoined = admitted.get(agent_id) is not slot.admitted
            if expired or rejoined or agent_id not in alive:
                del self._slots[agent_id]
                if expired:
                    late.append(agent_id)
                reason = "late" if expired else "rejoined" if rejoined else "gone"
                log.info("fit_given_up", agent=agent_id, reason=reason)
        return late
