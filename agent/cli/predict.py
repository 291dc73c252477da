"""``fedbus predict MODEL.onnx INPUT``: inference with the session code plugins use."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, cast

import click
import numpy as np
import numpy.typing as npt

from agent.errors import PluginError


def read_inputs(path: Path) -> npt.NDArray[np.float32]:
    """Rows to predict, float32 ``(n, ...)``, from ``.npy``, ``.npz`` (array ``x``, or its only
    array) or ``.csv`` (comma-separated numbers, no header). Never unpickles.

    Raises:
        PluginError: an unreadable file, an unknown suffix, or an ``.npz`` without ``x`` and
            with more than one array.
    """
    try:
        if path.suffix == ".npy":
            data: npt.NDArray[Any] = np.load(path, allow_pickle=False)
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                names = list(npz.files)
                if "x" not in names and len(names) != 1:
                    raise PluginError(f"{path} holds {names}: name the input array 'x'")
                data = npz["x" if "x" in names else names[0]]
        elif path.suffix == ".csv":
            data = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
        else:
            raise PluginError(f"{path}: INPUT must be .npy, .npz or .csv")
    except (OSError, ValueError) as exc:
        raise PluginError(f"cannot read {path}: {exc}") from exc
    if data.dtype.kind not in "biuf":
        raise PluginError(f"{path}: inputs must be numbers, got {data.dtype}")
    return np.asarray(data, dtype=np.float32)


@click.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument(
    "inputs", metavar="INPUT", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "cpu", "gpu"]),
    help="auto: TensorRT/CUDA when onnxruntime-gpu and a GPU are there, else CPU.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also save the model's raw output (scores) as this .npy file.",
)
def predict(model: Path, inputs: Path, device: str, output: Path | None) -> None:
    """Run MODEL (ONNX) on every row of INPUT; print the predicted class per row.

    The execution provider actually used is printed to stderr. Needs the `onnx` or `gpu`
    extra (onnxruntime)."""
    from agent.logs import configure_logging
    from agent.plugin.onnx_session import Device, open_model

    configure_logging(level="warning", fmt="console", stream=sys.stderr)
    x = read_inputs(inputs)
    session = open_model(model, device=cast(Device, device))
    scores = session.run(x)
    click.echo(f"provider: {session.provider}; {len(x)} rows", err=True)
    if output is not None:
        np.save(output, scores, allow_pickle=False)
    if scores.ndim == 2 and scores.shape[1] > 1:  # one score per class: the argmax
        for row, label in enumerate(scores.argmax(axis=1)):
            click.echo(f"{row}\t{int(label)}")
        return
    for row, values in enumerate(scores.reshape(len(scores), -1)):  # anything else, as is
        click.echo(f"{row}\t" + " ".join(f"{float(v):.6g}" for v in values))
