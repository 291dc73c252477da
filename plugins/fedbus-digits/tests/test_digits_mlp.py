"""The numpy MLP: initialisation, a stable softmax, exact gradients, and SGD that learns."""

from __future__ import annotations

import numpy as np
import pytest
from fedbus_digits import data, mlp
from fedbus_digits.data import Partition

pytestmark = pytest.mark.timeout(60)


def test_init_shapes_dtypes_and_determinism() -> None:
    """The default network is [W1 (64,64), b1 (64,), W2 (64,10), b2 (10,)] in float32, by seed."""
    params = mlp.init_params(mlp.layer_sizes(), seed=0)
    assert [p.shape for p in params] == [(64, 64), (64,), (64, 10), (10,)]
    assert all(p.dtype == np.float32 for p in params)
    same = mlp.init_params(mlp.layer_sizes(), seed=0)
    other = mlp.init_params(mlp.layer_sizes(), seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(params, same, strict=True))
    assert not np.array_equal(params[0], other[0])
    assert not params[1].any()


def test_init_scales() -> None:
    """Hidden weights have He scale sqrt(2/fan_in), the output Glorot scale."""
    params = mlp.init_params((400, 300, 10), seed=0)
    assert float(params[0].std()) == pytest.approx(np.sqrt(2 / 400), rel=0.02)
    assert float(params[2].std()) == pytest.approx(np.sqrt(2 / 310), rel=0.05)


def test_layer_sizes_rejects_empty_layer() -> None:
    """A layer of width zero is refused."""
    with pytest.raises(ValueError, match="width"):
        mlp.layer_sizes((64, 0))


def test_log_softmax_is_stable() -> None:
    """Huge logits give finite log-probabilities whose exponentials sum to one per row."""
    logits = np.array([[1e4, 0.0, -1e4], [-1e4, -1e4, -1e4], [0.0, 0.0, 0.0]], dtype=np.float32)
    logp = mlp.log_softmax(logits)
    assert np.isfinite(logp).all()
    np.testing.assert_allclose(np.exp(logp).sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(logp[2], np.log(1 / 3), rtol=1e-6)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("sizes", [(5, 4, 3), (6, 5, 4, 3), (4, 3)])
def test_gradients_match_finite_differences(sizes: tuple[int, ...], weight_decay: float) -> None:
    """Backpropagation agrees with central finite differences on tiny float64 networks."""
    rng = np.random.default_rng(0)
    params = [p.astype(np.float64) for p in mlp.init_params(sizes, seed=1)]
    params = [p + 0.1 * rng.standard_normal(p.shape) for p in params]  # non-zero biases too
    x = rng.random((7, sizes[0]))
    y = rng.integers(0, sizes[-1], size=7)
    _, grads = mlp.loss_and_grads(params, x, y, weight_decay=weight_decay)
    eps = 1e-6
    for p, g in zip(params, grads, strict=True):
        assert g.shape == p.shape
        numeric = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            saved = p[i]
            p[i] = saved + eps
            up, _ = mlp.loss_and_grads(params, x, y, weight_decay=weight_decay)
            p[i] = saved - eps
            down, _ = mlp.loss_and_grads(params, x, y, weight_decay=weight_decay)
            p[i] = saved
            numeric[i] = (up - down) / (2 * eps)
        np.testing.assert_allclose(g, numeric, rtol=1e-5, atol=1e-7)


def test_loss_and_accuracy_match_predictions() -> None:
    """Accuracy is the share of argmax predictions equal to the labels; loss is positive."""
    full = data.load_digits()
    params = mlp.init_params(mlp.layer_sizes(), seed=0)
    loss, accuracy = mlp.loss_and_accuracy(params, full.x, full.y)
    assert accuracy == pytest.approx(float((mlp.predict(params, full.x) == full.y).mean()))
    assert loss > 0


def test_loss_of_no_examples_is_refused() -> None:
    """The mean loss of zero examples raises instead of returning NaN."""
    params = mlp.init_params(mlp.layer_sizes(), seed=0)
    with pytest.raises(ValueError, match="zero examples"):
        mlp.loss_and_accuracy(params, np.zeros((0, 64)), np.zeros(0, dtype=np.int64))


@pytest.mark.parametrize(
    "kwargs",
    [{"epochs": 0}, {"batch_size": 0}, {"lr": 0.0}, {"lr": float("inf")}, {"weight_decay": -1.0}],
)
def test_train_config_rejects_bad_values(kwargs: dict[str, float]) -> None:
    """Hyper-parameters that cannot train raise ValueError."""
    with pytest.raises(ValueError, match="must be"):
        mlp.TrainConfig(**kwargs)  # type: ignore[arg-type]


def test_train_is_pure_and_deterministic() -> None:
    """train leaves its input untouched and repeats exactly given the same generator seed."""
    full = data.load_digits()
    params = mlp.init_params(mlp.layer_sizes(), seed=0)
    before = [p.copy() for p in params]
    config = mlp.TrainConfig(epochs=2, batch_size=16, lr=0.1)
    a = mlp.train(params, full.x[:200], full.y[:200], config=config, rng=np.random.default_rng(5))
    b = mlp.train(params, full.x[:200], full.y[:200], config=config, rng=np.random.default_rng(5))
    assert all(np.array_equal(p, q) for p, q in zip(params, before, strict=True))
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    assert all(p.dtype == np.float32 for p in a)
    assert not np.array_equal(a[0], params[0])


def test_full_train_set_reaches_95_percent() -> None:
    """SGD on the whole train split reaches >= 95% accuracy on the held-out test split."""
    split = data.agent_data(0, 1, partition=Partition.IID, seed=0)
    params = mlp.init_params(mlp.layer_sizes(), seed=0)
    config = mlp.TrainConfig(epochs=40, batch_size=16, lr=0.2)
    trained = mlp.train(
        params, split.train.x, split.train.y, config=config, rng=np.random.default_rng(0)
    )
    _, accuracy = mlp.loss_and_accuracy(trained, split.test.x, split.test.y)
    assert accuracy >= 0.95
