"""Async SecAgg+: the agents holding an update for a buffer's secure round.

An agent that announced ``update_ready`` holds its update in memory until the buffer's
secure round masks it (``agent.roles.trainer.async_fit``). One that went offline since, or
was admitted again (a new life: fresh keys, and a SecAgg+ ``fit_ins`` sent before its
admission is refused, ``sent_before_admission``), lost it. ``Holders.lost`` names them when
the round opens: they stay in its cohort as dropouts, but no stage waits for them (waiting
cost the round a stage timeout for each).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping

from agent.roles.aggregator.records import AgentRecord


class Holders:
    """Holding agents, each with the admission it announced its update under."""

    def __init__(self) -> None:
        self._admitted: dict[str, AgentRecord | None] = {}

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self._admitted

    def __iter__(self) -> Iterator[str]:
        return iter(self._admitted)

    def add(self, agent_id: str, admitted: AgentRecord | None) -> None:
        self._admitted[agent_id] = admitted

    def release(self, agents: Iterable[str]) -> None:
        """The round of ``agents`` ended: they hold nothing any more."""
        for agent_id in agents:
            self._admitted.pop(agent_id, None)

    def lost(
        self, cohort: Iterable[str], *, alive: Collection[str], admitted: Mapping[str, AgentRecord]
    ) -> list[str]:
        """The members of ``cohort`` that lost their update, sorted: not ``alive``, not
        holding, or admitted again since they announced it (``admitted``: the admissions
        now, by agent id)."""
        return sorted(
            a
            for a in cohort
            if a not in alive or a not in self._admitted or admitted.get(a) is not self._admitted[a]
        )
