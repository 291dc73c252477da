"""The ``onnx`` plugin: evaluate any ONNX classifier on this agent's local data.

For a model trained elsewhere (PyTorch, scikit-learn via skl2onnx, another federation...):
the aggregator's ``get_weights`` reads the model's floating-point initializers, every agent
evaluates them on its own labelled data through onnxruntime, and the aggregator averages
loss and accuracy by example count: federated evaluation, the data never leaving the agents.

The model must have one input (the batch on axis 0) whose first output is per-class scores
``(n, classes)``, ``classes >= 2``: logits (``scores = "logits"``, the default) or
probabilities (``scores = "probabilities"``). The local data is an ``.npz`` (read without
pickle) with ``x`` (numbers, ``(n, ...)``, cast to float32) and ``y`` (int labels ``(n,)``).

Weights are the model's floating-point initializers in graph order; other initializers
(shapes, indices) stay as in the file. ``fit`` does not train: it returns the weights it was
given, so that a run of one round publishes the model unchanged and evaluates it. Sessions
use TensorRT/CUDA when the ``gpu`` extra and a GPU are present, else the CPU (``device``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, get_args

import numpy as np
import numpy.typing as npt

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
from agent.plugin.onnx_session import Device, open_model, require

_NAME: Final = "onnx"
DEFAULT_OPTIONS: Final[Mapping[str, Any]] = {
    "model": None,
    "data": None,
    "scores": "logits",
    "device": "auto",
}


def read_data(path: Path) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """``x`` (float32) and ``y`` (int64) from the ``.npz`` at ``path``, never unpickling.

    Raises:
        PluginError: unreadable, missing ``x`` or ``y``, or ``len(x) != len(y)``.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            x, y = npz["x"], npz["y"]
    except (OSError, ValueError, KeyError) as exc:
        raise PluginError(f"{_NAME}: cannot read x and y from {path}: {exc}") from exc
    if x.dtype.kind not in "biuf" or y.dtype.kind not in "iu" or y.ndim != 1 or len(x) != len(y):
        raise PluginError(f"{_NAME}: {path} needs numeric x (n, ...) and int labels y (n,)")
    return x.astype(np.float32), y.astype(np.int64)


def log_probabilities(scores: npt.NDArray[Any], kind: str) -> npt.NDArray[np.float64]:
    """Row-wise log-probabilities from logits (a stable log-softmax) or probabilities."""
    s = np.asarray(scores, dtype=np.float64)
    if kind == "probabilities":
        return np.log(np.clip(s, 1e-12, 1.0))
    shifted = s - s.max(axis=1, keepdims=True)
    out: npt.NDArray[np.float64] = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return out


class OnnxPlugin:
    """One ONNX model and this agent's labelled data."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        """Read the model and the data.

        Raises:
            PluginError: unknown or missing options, or an unreadable model or data file.
        """
        unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
        if unknown:
            raise PluginError(
                f"{_NAME}: unknown option(s) {unknown}; known: {sorted(DEFAULT_OPTIONS)}"
            )
        o = {**DEFAULT_OPTIONS, **options}
        for key in ("model", "data"):
            if not isinstance(o[key], str) or not o[key]:
                raise PluginError(f"{_NAME}: option {key!r} (a file path) is required")
        if o["scores"] not in ("logits", "probabilities"):
            raise PluginError(
                f"{_NAME}: scores must be 'logits' or 'probabilities', got {o['scores']!r}"
            )
        if o["device"] not in get_args(Device):
            raise PluginError(
                f"{_NAME}: device must be one of {get_args(Device)}, got {o['device']!r}"
            )
        self.scores, self.device = str(o["scores"]), o["device"]
        self._onnx = require("onnx")
        try:
            self._model = self._onnx.load(o["model"])
        except Exception as exc:  # onnx raises protobuf and OS errors alike
            raise PluginError(f"{_NAME}: cannot load model {o['model']}: {exc}") from exc
        helper = self._onnx.numpy_helper
        self._trainable = [
            i
            for i, t in enumerate(self._model.graph.initializer)
            if helper.to_array(t).dtype.kind == "f"
        ]
        if not self._trainable:
            raise PluginError(f"{_NAME}: {o['model']} has no floating-point initializers")
        self.x, self.y = read_data(Path(o["data"]))

    def get_weights(self) -> Weights:
        """The model's floating-point initializers, in graph order (copies)."""
        init = self._model.graph.initializer
        return [np.array(self._onnx.numpy_helper.to_array(init[i])) for i in self._trainable]

    def num_examples(self) -> int:
        """The number of local labelled examples."""
        return len(self.y)

    def fit(self, weights: Weights, config: Mapping[str, Scalar]) -> FitResult:
        """No training: the weights as given (copied), the local example count, no metrics."""
        return FitResult([np.array(w) for w in weights], max(len(self.y), 1), {})

    def evaluate(self, weights: Weights, config: Mapping[str, Scalar]) -> EvaluateResult:
        """Mean cross-entropy (nats) and ``accuracy`` of the model with ``weights`` on the
        local data. Raises ``PluginError`` for weights that do not fit the model, or a model
        whose first output is not ``(n, classes >= 2)``."""
        session = open_model(self._with(weights), device=self.device, name=_NAME)
        scores = session.run(self.x)
        if scores.ndim != 2 or scores.shape[0] != len(self.y) or scores.shape[1] < 2:
            raise PluginError(
                f"{_NAME}: the model's first output has shape {scores.shape}, "
                f"expected ({len(self.y)}, classes >= 2)"
            )
        if len(self.y) == 0:
            return EvaluateResult(0.0, 0, {"accuracy": 0.0})
        logp = log_probabilities(scores, self.scores)
        loss = -float(logp[np.arange(len(self.y)), self.y].mean())
        accuracy = float((logp.argmax(axis=1) == self.y).mean())
        return EvaluateResult(loss, len(self.y), {"accuracy": accuracy})

    def _with(self, weights: Weights) -> bytes:
        """The model with its floating-point initializers replaced by ``weights``."""
        model = self._onnx.ModelProto()
        model.CopyFrom(self._model)
        helper = self._onnx.numpy_helper
        if len(weights) != len(self._trainable):
            raise PluginError(
                f"{_NAME}: {len(weights)} arrays for {len(self._trainable)} initializers"
            )
        for i, w in zip(self._trainable, weights, strict=True):
            old = helper.to_array(model.graph.initializer[i])
            if np.shape(w) != old.shape:
                raise PluginError(
                    f"{_NAME}: initializer {i} has shape {old.shape}, got {np.shape(w)}"
                )
            new = helper.from_array(np.asarray(w, dtype=old.dtype), model.graph.initializer[i].name)
            model.graph.initializer[i].CopyFrom(new)
        data: bytes = model.SerializeToString()
        return data


def describe() -> PluginInfo:
    """Options: ``model`` and ``data`` (paths, required), ``scores``, ``device``."""
    return PluginInfo(
        summary="federated evaluation of any ONNX classifier on local labelled data (.npz)",
        options=DEFAULT_OPTIONS,
        datasets=("local .npz with x and y",),
        models=("any ONNX classifier (scores per class)",),
    )


@describe_with(describe)
def create(context: PluginContext) -> OnnxPlugin:
    """The entry-point factory. Raises ``PluginError`` for bad options or files."""
    return OnnxPlugin(context.options)
