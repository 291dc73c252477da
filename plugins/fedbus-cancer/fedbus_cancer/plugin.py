"""The ``cancer-logreg`` plugin: L2-regularised logistic regression on breast-cancer data.

Weights: ``[w (30,), b (1,)]``, float32; the model predicts P(benign) = sigmoid(x·w + b)
on standardised features. ``fit`` runs mini-batch SGD on the binary cross-entropy;
``evaluate`` reports the mean cross-entropy (nats) and ``accuracy`` on the test slice.
``export`` writes an ONNX classifier with two logits per row, ``[0, x·w + b]``, so that
softmax/argmax over them are the logistic model's probabilities and labels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np

from agent.errors import PluginError
from agent.plugin.api import (
    EvaluateResult,
    FitResult,
    PluginContext,
    PluginInfo,
    Scalar,
    Weights,
    describe_with,
)
from fedbus_cancer.data import NUM_FEATURES, Split, agent_data

_NAME: Final = "cancer-logreg"
#: Every option with its default; None marks a required one.
DEFAULT_OPTIONS: Final[Mapping[str, Any]] = {
    "agent_index": None,
    "num_agents": None,
    "partition": "dirichlet",
    "alpha": 0.5,
    "seed": 0,
    "test_fraction": 0.2,
    "min_examples": 5,
}
#: Local training per round (the aggregator's fit config overrides any of these).
DEFAULT_FIT_CONFIG: Final[Mapping[str, Scalar]] = {
    "epochs": 5,
    "batch_size": 16,
    "lr": 0.1,
    "weight_decay": 1e-3,
}


def _options(given: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(given) - set(DEFAULT_OPTIONS))
    if unknown:
        raise PluginError(f"{_NAME}: unknown option(s) {unknown}; known: {sorted(DEFAULT_OPTIONS)}")
    o = {**DEFAULT_OPTIONS, **given}
    for key in ("agent_index", "num_agents", "seed", "min_examples"):
        if isinstance(o[key], bool) or not isinstance(o[key], int) or o[key] < 0:
            raise PluginError(f"{_NAME}: option {key!r} must be an int >= 0, got {o[key]!r}")
    if not 0 <= o["agent_index"] < o["num_agents"]:
        raise PluginError(
            f"{_NAME}: agent_index must be in [0, num_agents), got {o['agent_index']}"
        )
    if o["partition"] not in ("iid", "dirichlet"):
        raise PluginError(
            f"{_NAME}: partition must be 'iid' or 'dirichlet', got {o['partition']!r}"
        )
    for key, low, high in (("alpha", 0.0, math.inf), ("test_fraction", 0.0, 1.0)):
        value = o[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not low < value < high:
            raise PluginError(f"{_NAME}: option {key!r} must be in ({low}, {high}), got {value!r}")
    return o


def _number(config: Mapping[str, Scalar], key: str, *, minimum: float) -> float:
    value = config[key]
    if isinstance(value, bool | str) or not math.isfinite(value) or value < minimum:
        raise PluginError(
            f"{_NAME}: fit config {key!r} must be a number >= {minimum}, got {value!r}"
        )
    return float(value)


def _logits(w: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.asarray(x @ w + b[0], dtype=np.float64)


def loss_and_accuracy(weights: Weights, data: Split) -> tuple[float, float]:
    """Mean binary cross-entropy (nats) and accuracy of ``weights`` on ``data`` (n >= 1)."""
    z = _logits(weights[0], weights[1], data.x)
    loss = float(np.mean(np.logaddexp(0.0, z) - data.y * z))
    return loss, float(np.mean((z > 0) == (data.y == 1)))


class CancerPlugin:
    """One agent's shard and test slice. Nothing is mutated after construction."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        """Raises ``PluginError`` for bad options or options that cannot give every agent
        ``min_examples`` training examples."""
        self.options = _options(options)
        o = self.options
        try:
            self.train, self.test = agent_data(
                o["agent_index"],
                o["num_agents"],
                partition=o["partition"],
                alpha=o["alpha"],
                seed=o["seed"],
                test_fraction=o["test_fraction"],
                min_examples=o["min_examples"],
            )
        except ValueError as exc:
            raise PluginError(f"{_NAME}: {exc}") from exc

    def get_weights(self) -> Weights:
        """Zeros: ``[w (30,), b (1,)]`` float32, the same on every agent."""
        return [np.zeros(NUM_FEATURES, np.float32), np.zeros(1, np.float32)]

    def num_examples(self) -> int:
        """The size of the train shard."""
        return len(self.train.y)

    def fit(self, weights: Weights, config: Mapping[str, Scalar]) -> FitResult:
        """Mini-batch SGD from copies of ``weights``; ``round`` (default 0) seeds the shuffle.

        Config (defaults ``DEFAULT_FIT_CONFIG``): ``epochs``, ``batch_size``, ``lr``,
        ``weight_decay`` (L2 on ``w``), ``proximal_mu`` (FedProx's μ >= 0, default 0: Li et
        al., "Federated Optimization in Heterogeneous Networks", MLSys 2020, Eq. 2; the
        gradients of ``w`` and ``b`` get μ (w - w_global), w_global being ``weights``).

        Raises:
            PluginError: weights of the wrong shapes or a bad config value.
        """
        w, b = self._decode(weights)
        c = {"round": 0, "proximal_mu": 0.0, **DEFAULT_FIT_CONFIG, **config}
        epochs = int(_number(c, "epochs", minimum=1))
        batch = int(_number(c, "batch_size", minimum=1))
        lr, decay = _number(c, "lr", minimum=0), _number(c, "weight_decay", minimum=0)
        mu = _number(c, "proximal_mu", minimum=0)
        w0, b0 = w.copy(), b.copy()
        o, rnd = self.options, int(_number(c, "round", minimum=0))
        rng = np.random.default_rng([o["seed"], o["agent_index"], rnd])
        x, y = self.train.x, self.train.y
        for _ in range(epochs):
            order = rng.permutation(len(y))
            for start in range(0, len(y), batch):
                rows = order[start : start + batch]
                p = 1.0 / (1.0 + np.exp(-_logits(w, b, x[rows])))
                err = p - y[rows]
                grad_w = (x[rows].T @ err) / len(rows) + decay * w + mu * (w - w0)
                w -= np.float32(lr) * grad_w.astype(np.float32)
                b -= np.float32(lr * (err.mean() + mu * (b - b0)))
        loss, accuracy = loss_and_accuracy([w, b], self.train)
        return FitResult([w, b], len(y), {"train_loss": loss, "train_accuracy": accuracy})

    def evaluate(self, weights: Weights, config: Mapping[str, Scalar]) -> EvaluateResult:
        """Mean cross-entropy and ``accuracy`` on the test slice; ``config`` is unused."""
        w, b = self._decode(weights)
        if len(self.test.y) == 0:
            return EvaluateResult(0.0, 0, {"accuracy": 0.0})
        loss, accuracy = loss_and_accuracy([w, b], self.test)
        return EvaluateResult(loss, len(self.test.y), {"accuracy": accuracy})

    def export(self, weights: Weights, path: Path) -> Path:
        """Write an ONNX model (``x`` float32 ``(batch, 30)``, standardised → ``logits``
        float32 ``(batch, 2)`` = ``[0, x·w + b]``) at ``path`` (``.onnx`` appended if missing).

        Raises:
            PluginError: wrong shapes, or ``onnx`` not installed.
        """
        from agent.plugin.onnx_graph import export_dense

        w, b = self._decode(weights)
        two = [
            np.stack([np.zeros_like(w), w], axis=1),
            np.concatenate([[0.0], b]).astype(np.float32),
        ]
        return export_dense(two, path, name=_NAME)

    def _decode(self, weights: Weights) -> tuple[np.ndarray, np.ndarray]:
        shapes = [np.shape(a) for a in weights]
        if shapes != [(NUM_FEATURES,), (1,)]:
            raise PluginError(f"{_NAME}: expected weights of shapes [(30,), (1,)], got {shapes}")
        w, b = (np.array(a, dtype=np.float32) for a in weights)  # copies: inputs stay intact
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise PluginError(f"{_NAME}: weights hold NaN or infinity")
        return w, b


def describe() -> PluginInfo:
    """Options with defaults (None: required), the fit defaults, the data set and model."""
    return PluginInfo(
        summary="logistic regression on scikit-learn's breast-cancer data, IID or Dirichlet shards",
        options=DEFAULT_OPTIONS,
        fit_config=DEFAULT_FIT_CONFIG,
        datasets=("sklearn breast_cancer (569 tumours, 30 features, 2 classes)",),
        models=("logistic regression, L2 (numpy)",),
        exports=("onnx",),
    )


@describe_with(describe)
def create(context: PluginContext) -> CancerPlugin:
    """The entry-point factory: a ``CancerPlugin`` for ``context.options``.

    Raises:
        PluginError: bad options.
    """
    return CancerPlugin(context.options)
