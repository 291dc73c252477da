"""A fedbus command-plugin program: logistic regression in numpy, no fedbus import.

fedbus runs ``python train.py VERB IN OUT`` (see ``agent/plugin/command.py`` for the file
protocol). The data is synthetic: two overlapping Gaussian classes in 5 dimensions drawn from
``seed``, split 80/20 into train and test, each part cut into ``num_agents`` slices of which
this agent takes slice ``agent_index``. The model is ``[w (5,), b (1,)]`` in float32.

Any language can do the same: read ``IN/context.json``, ``IN/config.json`` and
``IN/weights.npz`` (a zip of ``.npy`` files), write ``OUT/weights.npz`` and ``OUT/result.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

FEATURES = 5
EXAMPLES = 800


def load(context: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """This agent's train and test examples (x float32, y 0/1 float32)."""
    rng = np.random.default_rng(context["seed"])
    direction = rng.normal(size=FEATURES)
    y = rng.integers(0, 2, size=EXAMPLES).astype(np.float32)
    x = (rng.normal(size=(EXAMPLES, FEATURES)) + np.outer(2 * y - 1, direction) * 0.8).astype(
        np.float32
    )
    cut = int(0.8 * EXAMPLES)
    i, n = context["agent_index"], context["num_agents"]
    train = np.array_split(np.arange(cut), n)[i]
    test = np.array_split(np.arange(cut, EXAMPLES), n)[i]
    return x[train], y[train], x[test], y[test]


def loss_and_accuracy(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray):
    """Mean binary cross-entropy and accuracy."""
    z = x @ w + b[0]
    loss = float(np.mean(np.logaddexp(0.0, z) - y * z))
    return loss, float(np.mean((z > 0) == (y > 0.5)))


def main(verb: str, indir: Path, outdir: Path) -> None:
    context = json.loads((indir / "context.json").read_text())
    if verb == "get_weights":
        np.savez(outdir / "weights.npz", np.zeros(FEATURES, np.float32), np.zeros(1, np.float32))
        return
    config = json.loads((indir / "config.json").read_text())
    with np.load(indir / "weights.npz", allow_pickle=False) as npz:
        w, b = (npz["arr_0"].copy(), npz["arr_1"].copy())
    x_train, y_train, x_test, y_test = load(context)
    if verb == "fit":
        lr = float(config.get("lr", 0.5))
        for _ in range(int(config.get("epochs", 20))):  # full-batch gradient descent
            p = 1.0 / (1.0 + np.exp(-(x_train @ w + b[0])))
            w -= (lr * x_train.T @ (p - y_train) / len(y_train)).astype(np.float32)
            b -= np.float32(lr * np.mean(p - y_train))
        np.savez(outdir / "weights.npz", w, b)
        loss, _ = loss_and_accuracy(w, b, x_train, y_train)
        result = {"num_examples": len(y_train), "metrics": {"train_loss": loss}}
    elif verb == "evaluate":
        loss, accuracy = loss_and_accuracy(w, b, x_test, y_test)
        result = {"loss": loss, "num_examples": len(y_test), "metrics": {"accuracy": accuracy}}
    else:
        print(f"unknown verb {verb!r}", file=sys.stderr)
        sys.exit(2)
    (outdir / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
