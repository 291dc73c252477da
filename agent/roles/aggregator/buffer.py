"""The buffer of buffered asynchronous aggregation (FedBuff: Nguyen et al., AISTATS 2022,
Algorithm 1, the server's lines 5-10): the updates that will make the next model version.

In the clear each update is folded on arrival into one float64 running sum (O(model), as
``fold.RunningMean``), weighted by its num_examples n_k and its staleness weight s(τ_k):

    Δ = Σ_k n_k · s(τ_k) · (w_k - x_{b_k}) / Σ_k n_k

where x_{b_k} is the model version b_k the update was trained from and τ_k the versions
published since. An update from the model in force has s(0) = 1 and this is FedAvg's mean;
staler ones move the model less (FedBuff §3: Δ̄ ← Δ̄ + s(τ)Δ, then Δ̄/K, here with
FedAvg's num_examples weighting). With participation weights ω_k (``participation``: how rarely
the agent contributes, FedAU) it is Σ_k n_k · s(τ_k) · ω_k · (w_k - x_{b_k}) / Σ_k n_k · ω_k,
the same mean when every ω_k is equal. Under SecAgg+ the buffer holds only what each agent
announced (``update_ready``: its base version and num_examples), never an update: the agents
weigh and mask their own in the buffer's secure round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from agent.errors import RoundError
from agent.mapped import release
from agent.plugin.api import Scalar, Weights, is_averaged
from agent.strategy.carried import CarriedValues
from agent.strategy.update import AggregatedUpdate, Delta, weighted_metrics


@dataclass(frozen=True, slots=True)
class Entry:
    """One update in the buffer: who, trained from which version, how stale, its weight.

    Attributes:
        agent_id: the agent.
        base_version: the model version it trained from.
        staleness: τ, versions published between ``base_version`` and the buffer's close
            (at arrival: the version in force only moves when a buffer closes).
        weight: s(τ).
        num_examples: n, as bounded (``agent.robust.bounds``).
        metrics: its fit metrics (empty under SecAgg+: the agent keeps them).
        participation: ω, its agent's participation weight (``participation``; 1.0: none).
    """

    agent_id: str
    base_version: int
    staleness: int
    weight: float
    num_examples: int
    metrics: dict[str, Scalar]
    participation: float = 1.0


class Buffer:
    """The entries of the next version, and (in the clear) their staleness-weighted sum.

    Args:
        size: K, the entries that fill it.
        like: the model's arrays (shapes; only floating-point arrays are summed, the
            integer ones are carried with a zero delta, as ``strategy.update.model_delta``,
            and the version takes the updates' lower median of them, ``carried``).
            None: a SecAgg+ buffer, which holds entries only.
    """

    def __init__(self, size: int, like: Weights | None) -> None:
        self.size = size
        self.entries: list[Entry] = []
        self._averaged = [] if like is None else [is_averaged(a) for a in like]
        self._sum: Delta | None = (
            None if like is None else [np.zeros(a.shape, np.float64) for a in like]
        )
        #: in the clear, the updates' integer arrays, whose lower median the version takes
        #: (``strategy.carried``; under SecAgg+ its secure round collects them)
        self.carried = CarriedValues(like if like is not None else [])

    @property
    def full(self) -> bool:
        """K entries are in."""
        return len(self.entries) >= self.size

    @property
    def agents(self) -> tuple[str, ...]:
        """The agents of the entries, sorted, each once (in the clear an agent may fill
        two places of one buffer: it trained again while the buffer filled)."""
        return tuple(sorted({e.agent_id for e in self.entries}))

    def holds(self, agent_id: str) -> bool:
        return any(e.agent_id == agent_id for e in self.entries)

    def add(
        self, entry: Entry, weights: Weights | None = None, base: Weights | None = None
    ) -> None:
        """Add ``entry``; in the clear fold n·s(τ)·ω·(``weights`` - ``base``) into the sum.

        Raises:
            RoundError: a plain buffer without weights and base, or a SecAgg+ one with them.
        """
        if (self._sum is None) != (weights is None or base is None):
            raise RoundError("a plain buffer folds weights; a SecAgg+ buffer holds none")
        if self._sum is not None and weights is not None and base is not None:
            self.carried.add(entry.agent_id, weights)  # an agent's newer update replaces
            scale = float(entry.num_examples) * entry.weight * entry.participation
            for acc, w, b, averaged in zip(self._sum, weights, base, self._averaged, strict=True):
                if averaged:
                    np.add(acc, scale * (w.astype(np.float64) - b.astype(np.float64)), out=acc)
                release(w)  # a mapped update's pages (agent.mapped)
        self.entries.append(entry)

    def result(self) -> AggregatedUpdate:
        """Δ = Σ n·s(τ)·ω·(w - x_b) / Σ n·ω (the sum is spent), with the fit metrics'
        num_examples-weighted means.

        Raises:
            RoundError: a SecAgg+ buffer, or nothing was added.
        """
        total = sum(e.num_examples for e in self.entries)
        weighed = sum(e.num_examples * e.participation for e in self.entries)
        if self._sum is None or total <= 0:
            raise RoundError("no plain update to aggregate")
        for acc in self._sum:
            np.divide(acc, weighed, out=acc)
        metrics = weighted_metrics([(e.metrics, e.num_examples) for e in self.entries])
        return AggregatedUpdate(self._sum, total, self.agents, metrics)

    def restale(self, version: int, weight: Callable[[int], float]) -> None:
        """SecAgg+: the entries' τ and s(τ) against ``version``, the model their secure
        round improves (what each agent weighs itself by)."""
        self.entries = [
            replace(e, staleness=version - e.base_version, weight=weight(version - e.base_version))
            for e in self.entries
        ]

    def staleness_metrics(self) -> dict[str, float]:
        """The buffer's staleness for the record: mean and max τ, mean s(τ), mean ω."""
        if not self.entries:
            return {}
        taus = [e.staleness for e in self.entries]
        return {
            "staleness_mean": float(np.mean(taus)),
            "staleness_max": float(max(taus)),
            "staleness_weight_mean": float(np.mean([e.weight for e in self.entries])),
            "participation_weight_mean": float(np.mean([e.participation for e in self.entries])),
        }
