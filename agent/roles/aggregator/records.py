"""What the aggregator records about each round (persisted, reported, shown)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from agent.messages.tensors import Tensor, digest, to_arrays, to_tensor, to_tensors
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
        metrics: every fit metric, num_examples-weighted over the survivors that reported
            it (under SecAgg+ the secure metrics, learnt only as the cohort's sums).
        eval_metrics: every evaluation metric, num_examples-weighted (empty: no evaluation).
        privacy: with DP on, the round's (ε, δ) so far, noise multiplier, clip norm and
            sampling rate (``agent.privacy.engine.RoundPrivacy``); None otherwise.
        revoked: cohort members revoked during the round (left out, not dropouts).
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
    revoked: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    privacy: dict[str, Any] | None = None

    @property
    def epsilon(self) -> float | None:
        """ε spent after this round (None without DP)."""
        return None if self.privacy is None else float(self.privacy["epsilon"])

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data: an unknown number is null, never a bare NaN."""
        out: dict[str, Any] = _no_nan(asdict(self))
        return out


def _no_nan(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


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
    #: why the run ended before its last round (``"privacy_budget"``), None if it did not
    stopped: str | None = None

    @property
    def failure(self) -> str | None:
        """Why the run did not do its job (None: it trained): no round had a survivor."""
        if any(r.survivors for r in self.rounds):
            return None
        return f"the run trained nothing: none of its {len(self.rounds)} round(s) had a survivor"

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
    """The global model in force: weights, their wire form, digest and ledger records."""

    version: int
    weights: Weights
    tensors: list[Tensor]
    sha256: str
    #: the round-ledger records ending with this model's (``agent.ledger.book``)
    ledger: tuple[bytes, ...] = ()

    @classmethod
    def of(cls, version: int, weights: Weights) -> GlobalState:
        """The state of ``weights``; its ``weights`` are read-only views of the wire form,
        so a model is held once, not twice."""
        tensors = to_tensors(weights)
        return cls(version, to_arrays(tensors), tensors, digest(tensors))

    @classmethod
    def taking(cls, version: int, weights: Weights) -> GlobalState:
        """``of``, emptying the list ``weights`` as it goes: each array is let go once its
        wire copy is made, so while a model-sized list is converted it is held once (plus
        one array), not twice. The caller must hold no other reference to the arrays for
        that to save memory; ``weights`` is ``[]`` afterwards."""
        tensors = []
        weights.reverse()  # pop() from the end, in the model's order
        while weights:
            tensors.append(to_tensor(weights.pop()))
        return cls(version, to_arrays(tensors), tensors, digest(tensors))
