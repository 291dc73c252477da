"""``fedbus demo --mode p2p``: the accuracy of the peers' mean model x̄ = (1/n) Σ_i x_i and
of each peer's own model.

P2P has no global model; x̄ is what D-PSGD's guarantee is about (Lian et al., NeurIPS 2017,
Theorem 1 bounds the gradient at the average of the local models) and what a final consensus
phase drives every peer to. The demo reads each peer's saved model (``state_dir/p2p_model.npz``,
``agent.roles.peer.state``) once the peers are done, averages the floating-point arrays
(integer arrays from the first peer, as ``mixing.mix`` keeps them), and evaluates x̄ with each
peer's plugin on that peer's test slice: the accuracy over all slices, weighted by their
num_examples, the same measure as a synchronous run's federated evaluation. Each peer's own
final model is evaluated the same way (over every slice, not its own few test examples), so
the worst peer is the worst model, not the hardest slice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from agent.config import AgentConfig
from agent.demo.model_eval import SliceEvaluator
from agent.errors import PluginError
from agent.plugin.api import PluginContext, Weights, is_averaged
from agent.plugin.loader import load_plugin
from agent.roles.peer import state

log = structlog.get_logger(__name__)


def mean_model(models: list[Weights]) -> Weights:
    """The element-wise mean of ``models`` (same count and shapes) in float64, cast back to
    each array's dtype; integer arrays are the first model's.

    Raises:
        ValueError: no models, or models of different layouts.
    """
    if not models:
        raise ValueError("no models to average")
    first = models[0]
    if any(
        len(m) != len(first) or any(a.shape != b.shape for a, b in zip(m, first, strict=True))
        for m in models
    ):
        raise ValueError("the peers' models differ in layout")
    out: Weights = []
    for index, array in enumerate(first):
        if not is_averaged(array):
            out.append(array)
            continue
        total = np.zeros(array.shape, dtype=np.float64)
        for model in models:
            total += model[index].astype(np.float64)
        out.append((total / len(models)).astype(array.dtype))
    return out


@dataclass(frozen=True, slots=True)
class FinalAccuracy:
    """The peers' final models, each evaluated over every peer's test slice."""

    #: the mean model x̄'s accuracy
    mean_model: float
    #: agent id → its own final model's accuracy
    peers: dict[str, float]

    @property
    def worst_peer(self) -> float:
        return min(self.peers.values())


def final_accuracy(configs: Mapping[str, Path]) -> FinalAccuracy | None:
    """The accuracy of the peers' mean model and of each peer's model over every peer's test
    slice (see the module docstring); None when no peer saved a model or no plugin reports
    ``accuracy``, or the saved models differ in layout."""
    loaded = {a: AgentConfig.load(path) for a, path in configs.items()}
    saved = {a: s[0] for a, c in loaded.items() if (s := state.load(c.state_dir)) is not None}
    if not saved:
        return None
    evaluators = []
    for agent_id, config in loaded.items():
        context = PluginContext(agent_id, config.plugin.options, config.state_dir)
        try:
            evaluators.append(load_plugin(config.plugin.name, context))
        except PluginError as exc:
            log.warning("final_model_not_evaluated", agent=agent_id, error=str(exc))
    try:
        average = mean_model(list(saved.values()))
    except ValueError as exc:  # a peer saved another plugin's model: measure nothing
        log.warning("final_model_not_evaluated", error=str(exc))
        return None
    slices = SliceEvaluator(evaluators)
    mean = slices.accuracy(average)
    if mean is None:
        return None
    peers = {a: slices.accuracy(model) for a, model in saved.items()}
    return FinalAccuracy(mean, {a: acc for a, acc in peers.items() if acc is not None})
