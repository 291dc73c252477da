"""A multilayer perceptron classifier in plain numpy: init, forward, loss, gradients, SGD.

Parameters are an ordered list ``[W1, b1, W2, b2, ...]`` where ``W_k`` has shape
``(sizes[k-1], sizes[k])`` and ``b_k`` has shape ``(sizes[k],)``; the default network for
digits is 64-64-10, i.e. ``[W1 (64, 64), b1 (64,), W2 (64, 10), b2 (10,)]``. Hidden layers use
ReLU, the output layer is a softmax read through the cross-entropy loss (natural log, nats).

``init_params`` returns float32 arrays. Every other function computes in the dtype of the
parameters it is given, so a float64 copy of the parameters gives float64 gradients (that is
how the finite-difference gradient check runs). Every function is vectorised over samples;
the only Python loops are over layers and mini-batches.

Sources: He et al. 2015, "Delving Deep into Rectifiers" (ReLU initialisation); Glorot &
Bengio 2010, "Understanding the difficulty of training deep feedforward neural networks"
(output-layer initialisation); the log-sum-exp shift for a stable softmax is standard
(e.g. Goodfellow et al., "Deep Learning", §4.1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Final

import numpy as np
import numpy.typing as npt

#: Input features of a digits image: 8 x 8 pixels.
NUM_FEATURES: Final = 64
#: Output classes: the digits 0-9.
NUM_CLASSES: Final = 10
#: Hidden layer widths of the default network (64-64-10).
DEFAULT_HIDDEN: Final = (64,)

FloatArray = npt.NDArray[np.floating[Any]]
IntArray = npt.NDArray[np.integer[Any]]
#: Model parameters: ``[W1, b1, W2, b2, ...]``.
Params = list[FloatArray]


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Hyper-parameters of one call to ``train``.

    Attributes:
        epochs: passes over the data, >= 1.
        batch_size: examples per SGD step, >= 1 (the last batch of an epoch may be smaller).
        lr: learning rate, > 0 and finite.
        weight_decay: L2 coefficient on the weight matrices (not the biases), >= 0.
        proximal_mu: FedProx's μ >= 0 (Li et al., "Federated Optimization in Heterogeneous
            Networks", MLSys 2020, §3, Eq. 2): every gradient gets μ (w - w_start), the
            gradient of (μ/2) ||w - w_start||² pulling towards the parameters ``train``
            started from (the global model); 0 is plain SGD.

    Raises:
        ValueError: a value out of range.
    """

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.1
    weight_decay: float = 0.0
    proximal_mu: float = 0.0

    def __post_init__(self) -> None:
        """Reject values that cannot train."""
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if not (math.isfinite(self.proximal_mu) and self.proximal_mu >= 0):
            raise ValueError(f"proximal_mu must be a finite number >= 0, got {self.proximal_mu}")


def layer_sizes(
    hidden: Sequence[int] = DEFAULT_HIDDEN,
    *,
    n_in: int = NUM_FEATURES,
    n_out: int = NUM_CLASSES,
) -> tuple[int, ...]:
    """The widths of every layer, input and output included: ``(n_in, *hidden, n_out)``.

    Raises:
        ValueError: a width < 1.
    """
    sizes = (n_in, *hidden, n_out)
    if any(s < 1 for s in sizes):
        raise ValueError(f"every layer width must be >= 1, got {sizes}")
    return sizes


def init_params(sizes: Sequence[int], *, seed: int) -> list[npt.NDArray[np.float32]]:
    """Deterministic initial parameters for a network with the given layer widths.

    Hidden weight matrices are He-normal (std ``sqrt(2 / fan_in)``), the output matrix is
    Glorot-normal (std ``sqrt(2 / (fan_in + fan_out))``), biases are zero.

    Args:
        sizes: layer widths, e.g. ``layer_sizes()`` = ``(64, 64, 10)``; at least two.
        seed: a non-negative int; the same seed gives bit-identical arrays.

    Returns:
        ``[W1, b1, ...]`` as float32 arrays.

    Raises:
        ValueError: fewer than two sizes.
    """
    if len(sizes) < 2:
        raise ValueError(f"a network needs at least an input and an output size, got {sizes}")
    rng = np.random.default_rng(seed)
    params: list[npt.NDArray[np.float32]] = []
    last = len(sizes) - 2
    for k, (fan_in, fan_out) in enumerate(pairwise(sizes)):
        std = math.sqrt(2.0 / (fan_in + fan_out)) if k == last else math.sqrt(2.0 / fan_in)
        params.append((rng.standard_normal((fan_in, fan_out)) * std).astype(np.float32))
        params.append(np.zeros(fan_out, dtype=np.float32))
    return params


def _activations(
    params: Sequence[FloatArray], x: FloatArray
) -> tuple[list[FloatArray], FloatArray]:
    """The input of every layer and the output logits, computed in the parameters' dtype."""
    a = np.asarray(x, dtype=params[0].dtype)
    inputs = [a]
    n_layers = len(params) // 2
    for k in range(n_layers - 1):
        a = np.maximum(a @ params[2 * k] + params[2 * k + 1], 0)
        inputs.append(a)
    logits = a @ params[-2] + params[-1]
    return inputs, logits


def forward(params: Sequence[FloatArray], x: FloatArray) -> FloatArray:
    """Logits, shape ``(n, n_out)``, for inputs ``x`` of shape ``(n, n_in)``."""
    return _activations(params, x)[1]


def log_softmax(logits: FloatArray) -> FloatArray:
    """Row-wise log-softmax, shifted by the row maximum so that ``exp`` never overflows."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    out: FloatArray = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return out


def predict(params: Sequence[FloatArray], x: FloatArray) -> npt.NDArray[np.int64]:
    """Predicted class per row of ``x``: int64, shape ``(n,)``."""
    labels: npt.NDArray[np.int64] = np.argmax(forward(params, x), axis=1).astype(np.int64)
    return labels


def loss_and_accuracy(
    params: Sequence[FloatArray], x: FloatArray, y: IntArray
) -> tuple[float, float]:
    """Mean cross-entropy (nats) and accuracy (fraction in [0, 1]) over ``n >= 1`` examples.

    Raises:
        ValueError: no examples.
    """
    if len(y) == 0:
        raise ValueError("loss and accuracy of zero examples are undefined")
    logp = log_softmax(forward(params, x))
    rows = np.arange(len(y))
    loss = -float(logp[rows, y].mean())
    accuracy = float((logp.argmax(axis=1) == y).mean())
    return loss, accuracy


def loss_and_grads(
    params: Sequence[FloatArray], x: FloatArray, y: IntArray, *, weight_decay: float = 0.0
) -> tuple[float, Params]:
    """Mean cross-entropy plus ``weight_decay / 2 * sum ||W||^2``, and its gradients.

    Args:
        params: ``[W1, b1, ...]``.
        x: inputs, shape ``(n, n_in)``, ``n >= 1``.
        y: integer labels in ``[0, n_out)``, shape ``(n,)``.
        weight_decay: L2 coefficient on the weight matrices.

    Returns:
        The loss (float) and gradients with the shapes and dtype of ``params``.
    """
    inputs, logits = _activations(params, x)
    n = len(y)
    rows = np.arange(n)
    logp = log_softmax(logits)
    loss = -float(logp[rows, y].mean())
    delta = np.exp(logp)
    delta[rows, y] -= 1
    delta /= n
    grads: Params = [np.empty(0)] * len(params)
    for k in reversed(range(len(params) // 2)):
        w = params[2 * k]
        grads[2 * k] = inputs[k].T @ delta
        grads[2 * k + 1] = delta.sum(axis=0)
        if weight_decay:
            loss += 0.5 * weight_decay * float(np.sum(w * w))
            grads[2 * k] += weight_decay * w
        if k:
            delta = (delta @ w.T) * (inputs[k] > 0)
    return loss, grads


def train(
    params: Sequence[FloatArray],
    x: FloatArray,
    y: IntArray,
    *,
    config: TrainConfig,
    rng: np.random.Generator,
) -> Params:
    """Mini-batch SGD from ``params``; returns new arrays and never modifies ``params``.

    Each epoch visits the examples in a fresh order drawn from ``rng``, so the result is
    deterministic given the inputs and the generator's state.

    Args:
        params: starting parameters (any float dtype; the result keeps it).
        x: inputs, shape ``(n, n_in)``.
        y: labels, shape ``(n,)``; with ``n == 0`` the result is an unchanged copy.
        config: epochs, batch size, learning rate, weight decay, FedProx's μ.
        rng: the shuffle generator (advanced by this call).
    """
    current = [p.copy() for p in params]
    mu = config.proximal_mu
    n = len(y)
    for _ in range(config.epochs if n else 0):
        order = rng.permutation(n)
        for start in range(0, n, config.batch_size):
            batch = order[start : start + config.batch_size]
            _, grads = loss_and_grads(current, x[batch], y[batch], weight_decay=config.weight_decay)
            for k, g in enumerate(grads):
                if mu:
                    g = g + mu * (current[k] - params[k])  # noqa: PLW2901 - FedProx, Eq. 2
                current[k] -= config.lr * g
    return current
