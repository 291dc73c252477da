"""ONNX export through ``torch.onnx`` (the ``torch.export``-based exporter, PyTorch ≥ 2.9's
default), so that ``fedbus predict`` and ``agent.plugin.onnx_session`` run the result.

The graph has one input ``x`` shaped like the traced example with a dynamic batch dimension
and one output ``logits``; it is traced in eval mode on the CPU (BatchNorm folds its running
statistics, dropout is off). The exporter needs ``onnx`` and ``onnxscript``. Its own
warnings, progress prints and log lines (e.g. "torchvision is not installed") are silenced
here: they are torch's, not the caller's.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from pathlib import Path

import torch

from agent.errors import PluginError


def export_onnx(module: torch.nn.Module, example: torch.Tensor, path: Path, *, name: str) -> Path:
    """Write ``module`` as ONNX at ``path`` (``.onnx`` appended when missing); returns it.

    ``example`` is one input batch (any batch size); the exported batch size is dynamic.

    Raises:
        PluginError: ``onnx``/``onnxscript`` missing, or the exporter failed on this module.
    """
    try:
        import onnxscript  # noqa: F401 - the exporter imports it; fail with a clear message
    except ImportError as exc:
        raise PluginError(f"{name}: ONNX export needs onnx and onnxscript installed") from exc
    target = path if path.suffix == ".onnx" else path.with_name(path.name + ".onnx")
    target.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(module).to("cpu").eval()
    batch = torch.cat([example.to("cpu")] * 2)  # a batch of 2: a dynamic dim cannot be 1
    torch_log = logging.getLogger("torch.onnx")
    level = torch_log.level
    torch_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (batch,),
                str(target),
                input_names=["x"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim.DYNAMIC},),
                verbose=False,
            )
    except Exception as exc:
        raise PluginError(f"{name}: torch.onnx.export failed: {exc!r}") from exc
    finally:
        torch_log.setLevel(level)
    return target
