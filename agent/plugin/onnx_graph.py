"""Dense classifiers as ONNX graphs, built with ``onnx.helper``, weights as initializers.

For parameters ``[W1, b1, ..., Wk, bk]`` the graph computes ``Relu(Gemm(a, W, b))`` for every
hidden layer, then ``Gemm(a, W, b)`` for the output logits: a numpy MLP's forward pass, and
with one layer a linear (softmax or logistic) model. Input ``x``: float32 ``(batch, n_in)``;
output ``logits``: float32 ``(batch, n_out)``; ``batch`` is symbolic. Opset 17 and IR
version 8, so that onnxruntime 1.18 and later load it.

``onnx`` is optional (extras ``onnx`` and ``gpu`` of fedbus): it is imported when a model is
built, and its absence is a ``PluginError`` naming the extra.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from agent.atomic import write_atomic
from agent.plugin.onnx_session import require

FloatArray = npt.NDArray[np.floating[Any]]

OPSET: Final = 17
IR_VERSION: Final = 8
INPUT: Final = "x"
OUTPUT: Final = "logits"


def dense_model(params: Sequence[FloatArray], *, name: str = "fedbus-model") -> Any:
    """The ``onnx.ModelProto`` of the dense network with parameters ``[W1, b1, ..., Wk, bk]``.

    ``W_j`` has shape ``(n_{j-1}, n_j)`` and ``b_j`` shape ``(n_j,)``; they are stored as
    float32 initializers ``W1``, ``b1``, ... The model passes ``onnx.checker``.

    Raises:
        PluginError: ``onnx`` is not installed.
        ValueError: an odd number of arrays, or shapes that do not chain.
    """
    onnx = require("onnx")
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    if len(params) < 2 or len(params) % 2:
        raise ValueError(f"expected [W1, b1, ..., Wk, bk], got {len(params)} arrays")
    layers = len(params) // 2
    initializers, nodes = [], []
    current = INPUT
    for k in range(layers):
        w = np.asarray(params[2 * k], dtype=np.float32)
        b = np.asarray(params[2 * k + 1], dtype=np.float32)
        if (
            w.ndim != 2
            or b.shape != (w.shape[1],)
            or (k and w.shape[0] != params[2 * k - 1].shape[0])
        ):
            raise ValueError(f"layer {k + 1}: W {w.shape} and b {b.shape} do not chain")
        initializers += [
            numpy_helper.from_array(w, f"W{k + 1}"),
            numpy_helper.from_array(b, f"b{k + 1}"),
        ]
        last = k == layers - 1
        gemm_out = OUTPUT if last else f"z{k + 1}"
        nodes.append(
            helper.make_node(
                "Gemm", [current, f"W{k + 1}", f"b{k + 1}"], [gemm_out], name=f"dense{k + 1}"
            )
        )
        if not last:
            current = f"a{k + 1}"
            nodes.append(helper.make_node("Relu", [gemm_out], [current], name=f"relu{k + 1}"))
    n_in, n_out = int(params[0].shape[0]), int(params[-1].shape[0])
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(INPUT, onnx.TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT, ["batch", n_out])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fedbus"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def dense_bytes(params: Sequence[FloatArray], *, name: str = "fedbus-model") -> bytes:
    """``dense_model(params)`` serialized. Raises like ``dense_model``."""
    data: bytes = dense_model(params, name=name).SerializeToString()
    return data


def export_dense(params: Sequence[FloatArray], path: Path, *, name: str = "fedbus-model") -> Path:
    """Write ``dense_model(params)`` to ``path`` atomically (``.onnx`` is appended if missing).

    Returns:
        The path written.

    Raises:
        PluginError: ``onnx`` is not installed.
        ValueError: see ``dense_model``.
    """
    target = path if path.suffix == ".onnx" else path.with_name(path.name + ".onnx")
    write_atomic(target, dense_bytes(params, name=name))
    return target
