"""FedAvg in memory over digits-mlp agents: the tuned defaults reach the target accuracy.

The simulation is a plain numpy weighted average (McMahan et al. 2017, "Communication-
Efficient Learning of Deep Networks from Decentralized Data", Algorithm 1 with every agent
selected each round); fedbus's real aggregator lives elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pytest
from fedbus_digits.options import DigitsOptions
from fedbus_digits.plugin import DEFAULT_FIT_CONFIG, DigitsPlugin, centralized_baseline

from agent.plugin.api import Scalar, Weights

pytestmark = pytest.mark.timeout(60)

NUM_AGENTS = 10
ROUNDS = 20


def weighted_average(updates: Sequence[tuple[Weights, int]]) -> Weights:
    """The num_examples-weighted mean of each array, computed in float64, returned as float32."""
    total = sum(n for _, n in updates)
    averaged: Weights = []
    for k, reference in enumerate(updates[0][0]):
        acc = np.zeros(reference.shape, dtype=np.float64)
        for weights, n in updates:
            acc += weights[k] * (n / total)
        averaged.append(acc.astype(np.float32))
    return averaged


def simulate_fedavg(
    agents: Sequence[DigitsPlugin], *, rounds: int, fit_config: Mapping[str, Scalar]
) -> list[float]:
    """Run FedAvg from agent 0's initial weights; return the test accuracy after each round.

    Accuracy is the num_examples-weighted mean of the agents' evaluations, i.e. the accuracy
    on the whole test set.
    """
    weights = agents[0].get_weights()
    history = []
    for rnd in range(rounds):
        results = [a.fit(weights, {**fit_config, "round": rnd}) for a in agents]
        weights = weighted_average([(r.weights, r.num_examples) for r in results])
        evaluations = [a.evaluate(weights, {}) for a in agents]
        correct = sum(float(e.metrics["accuracy"]) * e.num_examples for e in evaluations)
        history.append(correct / sum(e.num_examples for e in evaluations))
    return history


def _federation(seed: int, *, alpha: float = 0.5) -> list[DigitsPlugin]:
    return [
        DigitsPlugin(
            DigitsOptions.from_mapping(
                {"agent_index": k, "num_agents": NUM_AGENTS, "alpha": alpha, "seed": seed}
            )
        )
        for k in range(NUM_AGENTS)
    ]


def test_weighted_average_weights_by_examples() -> None:
    """An agent with three times the examples pulls the average three times as hard."""
    a = [np.zeros(2, dtype=np.float32)]
    b = [np.full(2, 4.0, dtype=np.float32)]
    (mean,) = weighted_average([(a, 1), (b, 3)])
    assert mean.dtype == np.float32
    np.testing.assert_array_equal(mean, [3.0, 3.0])


@pytest.mark.parametrize("seed", range(5))
def test_fedavg_dirichlet_reaches_target(seed: int) -> None:
    """10 agents, Dirichlet(0.5), 20 rounds, default fit config: >= 93% test accuracy."""
    history = simulate_fedavg(_federation(seed), rounds=ROUNDS, fit_config=DEFAULT_FIT_CONFIG)
    assert history[-1] >= 0.93
    assert history[-1] > history[0]


def test_fedavg_is_reproducible() -> None:
    """Two runs of the same federation give the same accuracy history, round by round."""
    first = simulate_fedavg(_federation(0), rounds=3, fit_config=DEFAULT_FIT_CONFIG)
    again = simulate_fedavg(_federation(0), rounds=3, fit_config=DEFAULT_FIT_CONFIG)
    assert first == again


def test_centralized_baseline_beats_target() -> None:
    """The centralized reference (all data, 20 x local epochs) reaches >= 95%."""
    result = centralized_baseline(rounds=ROUNDS)
    assert result.num_examples == 359
    assert float(result.metrics["accuracy"]) >= 0.95
