"""The digits-mlp plugin: options, weights, fit, evaluate, the entry point."""

from __future__ import annotations

import importlib.metadata
from typing import Any

import numpy as np
import pytest
from fedbus_digits import plugin as digits
from fedbus_digits.plugin import DEFAULT_FIT_CONFIG, DigitsPlugin, create

from agent.errors import PluginError
from agent.plugin.api import ENTRY_POINT_GROUP, Plugin, PluginContext

pytestmark = pytest.mark.timeout(60)

SHAPES = [(64, 64), (64,), (64, 10), (10,)]


def _plugin(agent_index: int = 0, **options: Any) -> DigitsPlugin:
    return create(
        PluginContext(
            agent_id=f"agent-{agent_index}",
            options={"agent_index": agent_index, "num_agents": 10, **options},
        )
    )


def test_create_gives_a_plugin() -> None:
    """The factory returns an object satisfying the Plugin protocol, with the default options."""
    p = _plugin()
    assert isinstance(_plugin(), Plugin)
    assert p.options.partition == "dirichlet"
    assert p.options.alpha == 0.5
    assert p.options.hidden == (64,)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"num_agents": 10}, "'agent_index' is required"),
        ({"agent_index": 0}, "'num_agents' is required"),
        ({"agent_index": 10, "num_agents": 10}, "must be < num_agents"),
        ({"agent_index": -1, "num_agents": 10}, "agent_index"),
        ({"agent_index": 0, "num_agents": 0}, "num_agents"),
        ({"agent_index": True, "num_agents": 10}, "agent_index"),
        ({"agent_index": "0", "num_agents": 10}, "agent_index"),
        ({"agent_index": 0, "num_agents": 10, "partition": "shards"}, "partition"),
        ({"agent_index": 0, "num_agents": 10, "partition": ["iid"]}, "partition"),
        ({"agent_index": 0, "num_agents": 10, "alpha": 0}, "alpha"),
        ({"agent_index": 0, "num_agents": 10, "alpha": -1.5}, "alpha"),
        ({"agent_index": 0, "num_agents": 10, "alpha": float("nan")}, "alpha"),
        ({"agent_index": 0, "num_agents": 10, "seed": -1}, "seed"),
        ({"agent_index": 0, "num_agents": 10, "hidden": [64, 0]}, "hidden"),
        ({"agent_index": 0, "num_agents": 10, "hidden": 64}, "hidden"),
        ({"agent_index": 0, "num_agents": 10, "test_fraction": 1.0}, "test_fraction"),
        ({"agent_index": 0, "num_agents": 10, "alhpa": 0.5}, "unknown option"),
        ({"agent_index": 0, "num_agents": 200}, "cannot give"),
    ],
)
def test_bad_options_raise_plugin_error(options: dict[str, Any], match: str) -> None:
    """Each bad option is refused at creation with a PluginError that names it."""
    with pytest.raises(PluginError, match=match):
        create(PluginContext(agent_id="a", options=options))


def test_integral_float_options_accepted() -> None:
    """TOML-ish values such as 2.0 for an int option are accepted."""
    assert _plugin(agent_index=2.0).options.agent_index == 2  # type: ignore[arg-type]


def test_initial_weights_identical_on_all_agents() -> None:
    """get_weights depends only on the model seed: every agent starts from the same arrays."""
    first = _plugin(0).get_weights()
    assert [w.shape for w in first] == SHAPES
    assert all(w.dtype == np.float32 for w in first)
    for k in (1, 9):
        other = _plugin(k, seed=3).get_weights()
        assert all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    changed = _plugin(0, model_seed=1).get_weights()
    assert not np.array_equal(first[0], changed[0])


def test_get_weights_returns_copies() -> None:
    """Changing the returned arrays does not change the next call's."""
    p = _plugin()
    p.get_weights()[0][:] = 7.0
    assert not (p.get_weights()[0] == 7.0).all()


def test_fit_shapes_dtypes_metrics_and_no_mutation() -> None:
    """fit returns float32 weights of the same shapes, the shard size and metrics; input intact."""
    p = _plugin(3)
    weights = p.get_weights()
    for w in weights:
        w.flags.writeable = False  # any in-place write would raise
    before = [w.copy() for w in weights]
    result = p.fit(weights, {"round": 1})
    assert [w.shape for w in result.weights] == SHAPES
    assert all(w.dtype == np.float32 for w in result.weights)
    assert all(np.array_equal(a, b) for a, b in zip(weights, before, strict=True))
    assert result.num_examples == p.num_examples() == len(p.data.train)
    assert set(result.metrics) == {"train_loss", "train_accuracy"}
    assert isinstance(result.metrics["train_loss"], float)
    assert 0.0 <= float(result.metrics["train_accuracy"]) <= 1.0
    assert not np.array_equal(result.weights[0], weights[0])


def test_fit_deterministic_per_round() -> None:
    """The same agent, weights and round train identically; another round shuffles differently."""
    p = _plugin(1)
    w = p.get_weights()
    a = p.fit(w, {"round": 4, "epochs": 1})
    b = p.fit(w, {"round": 4, "epochs": 1})
    c = p.fit(w, {"round": 5, "epochs": 1})
    assert all(np.array_equal(x, y) for x, y in zip(a.weights, b.weights, strict=True))
    assert not np.array_equal(a.weights[0], c.weights[0])


def test_fit_accepts_float64_weights() -> None:
    """Weights sent as float64 are trained and returned as float32."""
    p = _plugin()
    result = p.fit([w.astype(np.float64) for w in p.get_weights()], {"epochs": 1})
    assert all(w.dtype == np.float32 for w in result.weights)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"epochs": 0}, "epochs"),
        ({"epochs": "five"}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": -0.1}, "lr"),
        ({"lr": "fast"}, "lr"),
        ({"round": -1}, "round"),
    ],
)
def test_fit_rejects_bad_config(config: dict[str, Any], match: str) -> None:
    """A config value that cannot train raises PluginError naming the key."""
    p = _plugin()
    with pytest.raises(PluginError, match=match):
        p.fit(p.get_weights(), config)


def test_fit_and_evaluate_reject_bad_weights() -> None:
    """Weights of the wrong count or shape, or holding NaN, are refused."""
    p = _plugin()
    good = p.get_weights()
    nan = [w.copy() for w in good]
    nan[1][0] = np.nan
    transposed = [*good[:2], good[2].T, good[3]]
    for bad, match in [(good[:3], "shapes"), (transposed, "shapes"), (nan, "NaN")]:
        with pytest.raises(PluginError, match=match):
            p.fit(bad, {})
        with pytest.raises(PluginError, match=match):
            p.evaluate(bad, {})


def test_default_fit_config_is_the_fit_default() -> None:
    """fit with an empty config trains exactly as with DEFAULT_FIT_CONFIG."""
    p = _plugin()
    w = p.get_weights()
    a = p.fit(w, {})
    b = p.fit(w, dict(DEFAULT_FIT_CONFIG))
    assert all(np.array_equal(x, y) for x, y in zip(a.weights, b.weights, strict=True))


def test_weighted_evaluation_equals_whole_test_set() -> None:
    """The num_examples-weighted mean over all agents is the loss/accuracy on the whole test set."""
    agents = [_plugin(k) for k in range(10)]
    weights = agents[0].fit(agents[0].get_weights(), {}).weights
    results = [a.evaluate(weights, {}) for a in agents]
    total = sum(r.num_examples for r in results)
    accuracy = sum(float(r.metrics["accuracy"]) * r.num_examples for r in results) / total
    loss = sum(r.loss * r.num_examples for r in results) / total
    whole = digits.centralized().evaluate(weights, {})
    assert total == whole.num_examples == 359
    assert accuracy == pytest.approx(float(whole.metrics["accuracy"]), abs=1e-12)
    assert loss == pytest.approx(whole.loss, rel=1e-5)


def test_shards_cover_the_train_set() -> None:
    """The agents' num_examples add up to the centralized plugin's (the whole train set)."""
    sizes = [_plugin(k).num_examples() for k in range(10)]
    assert sum(sizes) == digits.centralized().num_examples() == 1797 - 359
    assert min(sizes) >= 10


def test_centralized_plugin_forces_one_iid_agent() -> None:
    """centralized() keeps the data seed and model options but holds all the data."""
    p = digits.centralized({"seed": 2, "hidden": [32], "agent_index": 5, "partition": "dirichlet"})
    assert (p.options.agent_index, p.options.num_agents, p.options.partition) == (0, 1, "iid")
    assert p.options.seed == 2
    assert [w.shape for w in p.get_weights()] == [(64, 32), (32,), (32, 10), (10,)]


def test_entry_point_is_registered() -> None:
    """Once the distribution is installed, `fedbus.plugins` lists digits-mlp -> create."""
    # Not installed is a failure, never a skip: `make install` installs it.
    importlib.metadata.distribution("fedbus-digits")
    found = {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert "digits-mlp" in found
    assert found["digits-mlp"].value == "fedbus_digits.plugin:create"
    assert found["digits-mlp"].load() is create


def test_proximal_mu_pulls_towards_the_global_model() -> None:
    """FedProx (Li et al. 2020, Eq. 2): with μ > 0 the trained weights end nearer the
    weights fit started from than plain SGD's, and μ = 0 is plain SGD exactly."""
    p = _plugin()
    start = p.get_weights()
    config = {"epochs": 2, "round": 1}

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


def test_train_adds_the_proximal_gradient() -> None:
    """One full-batch SGD step with μ: w' = w - lr (∇f(w) + μ (w - w_start)); at the start
    w = w_start, so the first step equals plain SGD's, and the second differs by exactly
    lr μ (w_1 - w_start)."""
    from fedbus_digits import mlp

    rng = np.random.default_rng(0)
    params = mlp.init_params([4, 3], seed=1)
    params64 = [p.astype(np.float64) for p in params]
    x, y = rng.normal(size=(5, 4)), rng.integers(0, 3, 5)
    one = mlp.TrainConfig(epochs=1, batch_size=5, lr=0.5, proximal_mu=2.0)
    two = mlp.TrainConfig(epochs=2, batch_size=5, lr=0.5, proximal_mu=2.0)
    w1 = mlp.train(params64, x, y, config=one, rng=np.random.default_rng(0))
    _, g1 = mlp.loss_and_grads(w1, x, y)
    w2 = mlp.train(params64, x, y, config=two, rng=np.random.default_rng(0))
    for p0, a, g, b in zip(params64, w1, g1, w2, strict=True):
        np.testing.assert_allclose(b, a - 0.5 * (g + 2.0 * (a - p0)), rtol=1e-12, atol=1e-12)
