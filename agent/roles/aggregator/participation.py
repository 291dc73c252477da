"""Participation weights for buffered async: each update weighted by how rarely its agent
contributes, so that a slow or intermittently connected agent's data counts in the model as
much as a fast, always-on agent's (``[aggregator.async] participation = "interval"``).

Why: in FedBuff (Nguyen et al., AISTATS 2022) a version is the mean of the next K updates
to arrive, so an agent's share of the model is its share of the arrivals: a device 5x
slower, or online half of the time, counts 5x or 2x less than under synchronous FedAvg
(where every cohort member counts once per round), and a class held mostly by such devices
is learned late (ARCHITECTURE.md §4, "Asynchronous mode": digits 8 and 9 in
``bench/modes.py``). The correction is FedAU's (Wang & Ji, "A Lightweight Method for
Tackling Unknown Participation Statistics in Federated Averaging", ICLR 2024, Algorithm 1):
weigh each update by the agent's *mean participation interval*, estimated online, an
estimate of 1 / its participation probability, each interval cut off at ``cap``.

Here the clock is the buffer's: every accepted update advances it by 1/K, so an interval is
in versions (the fleet's updates that arrived in between, over K) and is independent of
the machine's speed. An agent's first interval runs from its first ``fit_ins`` (not from
the run's start: an agent that joins late is not taken for a rare one); later ones from its
previous accepted update, so an agent that was offline counts its absence. The buffer's
mean is self-normalised (``buffer.Buffer``: Σ n·s(τ)·ω·Δ / Σ n·ω, the Hájek form of FedAU's
estimator): the server step keeps its size, only the agents' shares move. O(agents)
floats of state, kept in memory (a restarted aggregator estimates afresh). Off by
default (``AsyncConfig.participation``): measured on ``bench/modes.py``'s fleet it did not
make async reliably faster (ARCHITECTURE.md §4).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.async_settings import AsyncConfig, Participation


@dataclass(slots=True)
class _Intervals:
    """One agent's observed intervals: their count and mean, and the clock it last
    contributed (or was first sent a fit) at."""

    last: float
    count: int = 0
    mean: float = 0.0


@dataclass(slots=True)
class ParticipationWeights:
    """FedAU's online interval estimate per agent, on the buffer's clock.

    Args:
        rule: ``Participation``.
        buffer_size: K; each accepted update advances the clock by 1/K versions.
        cap: the cutoff of one interval, in versions (FedAU's K): an agent away longer
            counts as ``cap``, which bounds the weight of a returning agent's update.
    """

    rule: Participation
    buffer_size: int
    cap: float
    clock: float = 0.0
    _agents: dict[str, _Intervals] = field(default_factory=dict)

    def sent(self, agent_ids: list[str]) -> None:
        """``agent_ids`` were sent a fit now: an agent's first interval starts at its first."""
        for agent_id in agent_ids:
            if agent_id not in self._agents:
                self._agents[agent_id] = _Intervals(last=self.clock)

    def weigh(self, agent_id: str) -> float:
        """An update of ``agent_id`` was accepted now: the clock advances by 1/K and the
        interval since its last one (or its first fit) joins its mean; returns ω > 0, the
        mean interval in versions (1.0 with ``none``)."""
        self.clock += 1.0 / self.buffer_size
        if self.rule is Participation.NONE:
            return 1.0
        seen = self._agents.setdefault(agent_id, _Intervals(last=self.clock - 1.0))
        interval = min(self.cap, self.clock - seen.last)
        seen.last, seen.count = self.clock, seen.count + 1
        seen.mean += (interval - seen.mean) / seen.count
        return seen.mean


def weights_for(settings: AsyncConfig, secure: bool) -> ParticipationWeights:
    """A run's estimator for ``settings.participation``; ``none`` under SecAgg+, where each
    agent weighs its own masked update and the aggregator cannot weigh it again."""
    rule = Participation.NONE if secure else settings.participation
    return ParticipationWeights(rule, settings.buffer_size, settings.participation_cap)
