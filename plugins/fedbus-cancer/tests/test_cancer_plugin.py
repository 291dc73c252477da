"""cancer-logreg: the split and shards, learning, FedAvg, the ONNX export."""

from __future__ import annotations

import numpy as np
import pytest
from fedbus_cancer.data import agent_data, load_breast_cancer
from fedbus_cancer.plugin import create

from agent.errors import PluginError
from agent.plugin.api import PluginContext
from agent.plugin.onnx_session import open_model

pytestmark = pytest.mark.timeout(60)


def plugin(index: int = 0, agents: int = 1, **options: object):  # type: ignore[no-untyped-def]
    return create(
        PluginContext(f"a{index}", {"agent_index": index, "num_agents": agents, **options})
    )


def test_the_data_is_the_bundled_breast_cancer_set() -> None:
    """569 examples, 30 features, 212 malignant (0) and 357 benign (1): no download."""
    x, y = load_breast_cancer()
    assert x.shape == (569, 30)
    assert np.bincount(y).tolist() == [212, 357]


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_shards_and_test_slices_partition_the_splits(partition: str) -> None:
    """Five agents' train shards and test slices are disjoint and cover one agent's whole
    train and test sets (compared as rows of the standardised features)."""
    whole_train, whole_test = agent_data(
        0, 1, partition="iid", alpha=0.5, seed=3, test_fraction=0.2, min_examples=5
    )
    parts = [
        agent_data(i, 5, partition=partition, alpha=0.3, seed=3, test_fraction=0.2, min_examples=5)
        for i in range(5)
    ]
    assert sum(len(p[0].y) for p in parts) == len(whole_train.y) == 456
    assert sum(len(p[1].y) for p in parts) == len(whole_test.y) == 113
    rows = {r.tobytes() for p in parts for r in p[0].x}
    assert rows == {r.tobytes() for r in whole_train.x}
    assert min(len(p[0].y) for p in parts) >= 5


def test_centralized_training_reaches_high_accuracy() -> None:
    """One agent with all the data: 10 rounds of fit reach >= 95% test accuracy."""
    p = plugin()
    weights = p.get_weights()
    for r in range(10):
        weights = p.fit(weights, {"round": r}).weights
    assert p.evaluate(weights, {}).metrics["accuracy"] >= 0.95


def test_fedavg_over_skewed_agents_learns() -> None:
    """FedAvg over 4 Dirichlet(0.5) agents for 10 rounds reaches >= 93% on the whole test set."""
    agents = [plugin(i, 4) for i in range(4)]
    weights = agents[0].get_weights()
    for r in range(1, 11):
        results = [a.fit(weights, {"round": r}) for a in agents]
        total = sum(res.num_examples for res in results)
        weights = [
            sum(res.weights[k] * (res.num_examples / total) for res in results) for k in range(2)
        ]
    evals = [a.evaluate(weights, {}) for a in agents]
    n = sum(e.num_examples for e in evals)
    accuracy = sum(float(e.metrics["accuracy"]) * e.num_examples for e in evals) / n
    assert accuracy >= 0.93


def test_onnx_export_gives_the_same_probabilities(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The exported two-logit graph's softmax is the logistic model's sigmoid (1e-5) and its
    argmax the model's labels."""
    p = plugin()
    weights = p.fit(p.get_weights(), {"round": 1}).weights
    path = p.export(weights, tmp_path / "cancer")
    assert path.name == "cancer.onnx"
    scores = open_model(path, device="cpu").run(p.test.x)
    z = p.test.x @ weights[0] + weights[1][0]
    np.testing.assert_allclose(scores[:, 1] - scores[:, 0], z, atol=1e-5)
    assert ((scores.argmax(axis=1) == 1) == (z > 0)).all()


def test_bad_options_and_weights_are_plugin_errors() -> None:
    """Unknown options, an index past num_agents, and weights of other shapes."""
    with pytest.raises(PluginError, match="unknown option"):
        plugin(alhpa=1)
    with pytest.raises(PluginError, match="agent_index"):
        plugin(3, 2)
    with pytest.raises(PluginError, match="shapes"):
        plugin().fit([np.zeros(3, np.float32)], {})


def test_proximal_mu_pulls_towards_the_global_model() -> None:
    """FedProx (Li et al. 2020, Eq. 2): with μ > 0 the trained weights end nearer the
    weights fit started from than plain SGD's, and μ = 0 is plain SGD exactly."""
    p = plugin()
    start = p.get_weights()
    config = {"epochs": 3, "round": 1}

    def distance(result_weights: list[np.ndarray]) -> float:
        return sum(float(np.linalg.norm(a - s)) for a, s in zip(result_weights, start, strict=True))

    plain = p.fit(start, config).weights
    zero = p.fit(start, {**config, "proximal_mu": 0.0}).weights
    prox = p.fit(start, {**config, "proximal_mu": 1.0}).weights
    for a, b in zip(plain, zero, strict=True):
        np.testing.assert_array_equal(a, b)
    assert distance(prox) < distance(plain)
    with pytest.raises(PluginError):
        p.fit(start, {"proximal_mu": -1.0})
