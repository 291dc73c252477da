"""Running ONNX models with onnxruntime: one session helper for plugins and ``fedbus predict``.

onnxruntime is optional (extra ``onnx`` for the CPU build, ``gpu`` for the build with the CUDA
and TensorRT execution providers; never both in one environment). It is imported lazily, so
that the agent runs without it; asking for a session without it raises ``PluginError`` saying
what to install.

Execution providers: with ``device="auto"`` a session asks for TensorRT, then CUDA, then CPU,
keeping those the installed build offers (``onnxruntime.get_available_providers()``). A build
can offer CUDA while the machine has no usable GPU (or TensorRT without its libraries):
onnxruntime then falls back to the next provider when the session is created. So the
provider actually used is read back from ``session.get_providers()`` (not ``get_device()``,
which only names the build), stored in ``OnnxModel.provider`` and logged as
``onnx_session_opened``. ``device="cpu"`` asks for the CPU provider only; ``device="gpu"``
fails unless a GPU provider is actually in use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import structlog

from agent.errors import PluginError

Device = Literal["auto", "cpu", "gpu"]
#: Execution providers in order of preference for ``device="auto"``.
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = frozenset(PREFERRED_PROVIDERS[:2])
_INSTALL_HINT = "pip install 'fedbus[onnx]' (CPU) or 'fedbus[gpu]' (CUDA/TensorRT), not both"

log = structlog.get_logger(__name__)


def require(module: Literal["onnxruntime", "onnx"]) -> ModuleType:
    """Import ``onnxruntime`` or ``onnx``.

    Raises:
        PluginError: it is not installed; the message says which extra to install.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise PluginError(f"{module} is not installed: {_INSTALL_HINT}") from exc


def choose_providers(available: list[str], device: Device) -> list[str]:
    """The providers to ask for, most preferred first.

    Raises:
        PluginError: ``device="gpu"`` and the build offers no GPU provider.
    """
    if device == "cpu":
        return ["CPUExecutionProvider"]
    chosen = [p for p in PREFERRED_PROVIDERS if p in available]
    if device == "gpu" and not GPU_PROVIDERS & set(chosen):
        raise PluginError(
            f"device 'gpu' asked for, but onnxruntime offers only {available}: "
            "install the 'gpu' extra (onnxruntime-gpu) on a machine with CUDA"
        )
    return chosen or ["CPUExecutionProvider"]


@dataclass(frozen=True, slots=True)
class OnnxModel:
    """An open inference session.

    Attributes:
        session: the ``onnxruntime.InferenceSession``.
        providers: ``session.get_providers()``: the providers in use, the first one runs it.
        input_name: the model's (single) input.
        input_shape: its declared shape; strings or None for symbolic dimensions.
        output_names: the model's outputs in order.
    """

    session: Any
    providers: list[str]
    input_name: str
    input_shape: list[int | str | None]
    output_names: list[str]

    @property
    def provider(self) -> str:
        """The execution provider that runs the model (e.g. ``"CPUExecutionProvider"``)."""
        return self.providers[0]

    def run(self, x: npt.NDArray[Any], *, output: int = 0) -> npt.NDArray[Any]:
        """Run the model on ``x`` (cast to float32; the batch on axis 0); one output.

        Raises:
            PluginError: onnxruntime rejected the input (the message says why).
        """
        batch = np.ascontiguousarray(x, dtype=np.float32)
        try:
            outputs = self.session.run([self.output_names[output]], {self.input_name: batch})
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise PluginError(f"onnxruntime could not run the model: {exc}") from exc
        return np.asarray(outputs[0])


def open_model(model: Path | bytes, *, device: Device = "auto", name: str = "") -> OnnxModel:
    """Open ``model`` (a ``.onnx`` path or the serialized bytes) for inference.

    Raises:
        PluginError: onnxruntime missing, an unreadable or invalid model, a model with more
            than one input, or ``device="gpu"`` without a GPU provider in use.
    """
    ort = require("onnxruntime")
    requested = choose_providers(list(ort.get_available_providers()), device)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the provider in use is logged below
    source = str(model) if isinstance(model, Path) else model
    try:
        session = ort.InferenceSession(source, sess_options=options, providers=requested)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        shown = model if isinstance(model, Path) else f"{len(model)} bytes of model"
        raise PluginError(f"onnxruntime cannot load {shown}: {exc}") from exc
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise PluginError(f"the model has {len(inputs)} inputs; exactly one is supported")
    providers = list(session.get_providers())
    log.info(
        "onnx_session_opened",
        model=name or (str(model) if isinstance(model, Path) else ""),
        provider=providers[0],
        providers=providers,
        requested=requested,
    )
    if device == "gpu" and providers[0] not in GPU_PROVIDERS:
        raise PluginError(f"device 'gpu' asked for, but onnxruntime runs on {providers[0]}")
    return OnnxModel(
        session=session,
        providers=providers,
        input_name=inputs[0].name,
        input_shape=list(inputs[0].shape),
        output_names=[o.name for o in session.get_outputs()],
    )
