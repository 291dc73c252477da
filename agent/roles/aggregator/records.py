"""What the aggregator records about each round (persisted, reported, shown)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from agent.messages.tensors import Tensor, digest, to_arrays, to_tensors
from agent.plugin.api import Weights


@dataclass(frozen=True, slots=True)
class RoundRecord:
    """One round, as the aggregator saw it.

    Attributes:
        round: 1-based round number.
        cohort: agents sampled for the round.
        survivors: agents whose update arrived before the deadline.
        dropouts: cohort members that did not deliver.
        num_examples: sum of the survivors' num_examples.
        train_loss: num_examples-weighted mean of the survivors' ``train_loss`` (NaN if none).
        accuracy, loss: federated evaluation of the new model (None when not evaluated).
        eval_examples: examples the evaluation covered.
        seconds: wall time of the round, evaluation included.
        model_version, model_sha256: the global model after the round.
    """

    round: int
    cohort: list[str]
    survivors: list[str]
    dropouts: list[str]
    num_examples: int
    train_loss: float
    accuracy: float | None
    loss: float | None
    eval_examples: int
    seconds: float
    model_version: int
    model_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RoundObserver(Protocol):
    """Watches the aggregator's rounds (the demo shows progress with it). Calls are made on
    the event loop and must return quickly."""

    def round_started(self, round: int, cohort: Sequence[str]) -> None: ...

    def round_finished(self, record: RoundRecord) -> None: ...


@dataclass(frozen=True, slots=True)
class RunSummary:
    """The whole run: every round, and the final model."""

    rounds: list[RoundRecord]
    final_version: int
    final_sha256: str

    @property
    def final_accuracy(self) -> float | None:
        evaluated = [r.accuracy for r in self.rounds if r.accuracy is not None]
        return evaluated[-1] if evaluated else None


@dataclass(slots=True)
class AgentRecord:
    """An admitted agent."""

    num_examples: int
    joined_at: float
    missed_last_round: bool = False


@dataclass(frozen=True, slots=True)
class GlobalState:
    """The global model in force: weights, their wire form and digest."""

    version: int
    weights: Weights
    tensors: list[Tensor]
    sha256: str

    @classmethod
    def of(cls, version: int, weights: Weights) -> GlobalState:
        """The state of ``weights``; its ``weights`` are read-only views of the wire form,
        so a model is held once, not twice."""
        tensors = to_tensors(weights)
        return cls(version, to_arrays(tensors), tensors, digest(tensors))
