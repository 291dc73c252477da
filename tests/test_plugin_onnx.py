"""ONNX: the demo exports its final model, onnxruntime scores it as numpy does, `fedbus
predict` and the `onnx` plugin run it, and the execution provider is chosen and logged.

No GPU is available where these tests run: the CUDA/TensorRT choice is tested through
``choose_providers`` with the provider lists a GPU build reports; the session code itself runs
on the CPU provider."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fedbus_digits import mlp
from fedbus_digits.plugin import centralized
from fedbus_onnx.plugin import create as create_onnx_plugin
from structlog.testing import capture_logs

from agent.errors import PluginError
from agent.plugin.api import PluginContext
from agent.plugin.onnx_graph import dense_model
from agent.plugin.onnx_session import choose_providers, open_model, require
from agent.state import read_weights

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished `fedbus demo` (3 agents, 3 rounds, its own nats-server) and its report."""
    report = tmp_path_factory.mktemp("onnx-demo") / "report"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "demo",
            "--agents",
            "3",
            "--rounds",
            "3",
            "--report-dir",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"final model exported: {report}/model.onnx" in run.stdout
    return report


def test_exported_final_model_scores_as_numpy(demo_report: Path) -> None:
    """The demo's model.onnx, run by onnxruntime on the whole digits test set, gives the
    numpy MLP's logits to 1e-5 and so the same accuracy, the accuracy the federation
    reported for its last round."""
    weights = read_weights(demo_report / "aggregator" / "global_model.npz")
    test = centralized().data.test
    expected = mlp.forward(weights, test.x)
    with capture_logs() as logs:
        model = open_model(demo_report / "model.onnx", device="auto")
    got = model.run(test.x)
    assert got.shape == (len(test.y), 10)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    onnx_accuracy = float((got.argmax(axis=1) == test.y).mean())
    assert onnx_accuracy == float((expected.argmax(axis=1) == test.y).mean())
    reported = __import__("json").loads((demo_report / "metrics.json").read_text())
    assert onnx_accuracy == pytest.approx(reported["final_accuracy"], abs=1e-12)
    opened = [e for e in logs if e["event"] == "onnx_session_opened"]
    assert opened[0]["provider"] == model.provider == "CPUExecutionProvider"


def test_predict_cli_matches_numpy(demo_report: Path, tmp_path: Path) -> None:
    """`fedbus predict model.onnx rows.npy` prints the numpy argmax of every row, names the
    provider on stderr and saves the raw scores on request."""
    weights = read_weights(demo_report / "aggregator" / "global_model.npz")
    rows = centralized().data.test.x[:25]
    np.save(tmp_path / "rows.npy", rows)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "predict",
            str(demo_report / "model.onnx"),
            str(tmp_path / "rows.npy"),
            "--output",
            str(tmp_path / "scores.npy"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    predicted = [int(line.split("\t")[1]) for line in out.stdout.splitlines()]
    assert predicted == mlp.predict(weights, rows).tolist()
    assert "provider: CPUExecutionProvider" in out.stderr
    np.testing.assert_allclose(
        np.load(tmp_path / "scores.npy"), mlp.forward(weights, rows), atol=1e-5
    )


def test_onnx_plugin_evaluates_the_exported_model(demo_report: Path, tmp_path: Path) -> None:
    """The `onnx` plugin reads the model's initializers as weights and evaluates them on a
    local .npz with the accuracy and loss of the digits plugin's own evaluation."""
    digits = centralized()
    data = tmp_path / "local.npz"
    np.savez(data, x=digits.data.test.x, y=digits.data.test.y)
    plugin = create_onnx_plugin(
        PluginContext("a", {"model": str(demo_report / "model.onnx"), "data": str(data)})
    )
    weights = plugin.get_weights()
    assert [w.shape for w in weights] == [(64, 64), (64,), (64, 10), (10,)]
    got = plugin.evaluate(weights, {})
    want = digits.evaluate(read_weights(demo_report / "aggregator" / "global_model.npz"), {})
    assert got.num_examples == want.num_examples
    assert got.metrics["accuracy"] == want.metrics["accuracy"]
    assert got.loss == pytest.approx(want.loss, abs=1e-5)
    zeroed = plugin.evaluate([np.zeros_like(w) for w in weights], {})
    assert zeroed.loss == pytest.approx(np.log(10), abs=1e-6)  # uniform over 10 classes


def test_digits_evaluates_through_onnxruntime_as_through_numpy() -> None:
    """digits-mlp with backend = "onnxruntime" gives numpy's loss (to 1e-5) and accuracy."""
    numpy_plugin = centralized()
    onnx_plugin = centralized({"backend": "onnxruntime", "device": "cpu"})
    weights = numpy_plugin.fit(numpy_plugin.get_weights(), {"epochs": 2}).weights
    a, b = numpy_plugin.evaluate(weights, {}), onnx_plugin.evaluate(weights, {})
    assert a.metrics["accuracy"] == b.metrics["accuracy"]
    assert a.loss == pytest.approx(b.loss, abs=1e-5)


def test_plugin_export_cli_writes_an_onnx_model(demo_report: Path, tmp_path: Path) -> None:
    """`fedbus plugin export digits-mlp global_model.npz out` writes out.onnx on request."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "plugin",
            "export",
            "digits-mlp",
            str(demo_report / "aggregator" / "global_model.npz"),
            str(tmp_path / "final"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "final.onnx").read_bytes() == (demo_report / "model.onnx").read_bytes()


def test_graph_is_built_with_initializers() -> None:
    """The graph holds the weights as initializers W1, b1, W2, b2 and Gemm/Relu/Gemm nodes,
    with a symbolic batch dimension; it passes onnx.checker (inside dense_model)."""
    rng = np.random.default_rng(0)
    params = [rng.normal(size=s).astype(np.float32) for s in [(4, 3), (3,), (3, 2), (2,)]]
    model = dense_model(params)
    assert [i.name for i in model.graph.initializer] == ["W1", "b1", "W2", "b2"]
    assert [n.op_type for n in model.graph.node] == ["Gemm", "Relu", "Gemm"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"
    assert dims[1].dim_value == 4
    with pytest.raises(ValueError, match="do not chain"):
        dense_model([params[0], params[1], params[0], params[3]])


def test_provider_choice_prefers_tensorrt_then_cuda_then_cpu() -> None:
    """With a GPU build's providers, auto asks for TensorRT, CUDA, CPU in that order; cpu
    asks for the CPU only; gpu without a GPU provider is an error naming the extra."""
    gpu_build = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(gpu_build, "auto") == gpu_build
    assert choose_providers(gpu_build[1:], "gpu") == gpu_build[1:]
    assert choose_providers(gpu_build, "cpu") == ["CPUExecutionProvider"]
    cpu_build = ["AzureExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(cpu_build, "auto") == ["CPUExecutionProvider"]
    with pytest.raises(PluginError, match="install the 'gpu' extra"):
        choose_providers(cpu_build, "gpu")


def test_gpu_device_on_a_cpu_machine_is_a_clear_error() -> None:
    """Asking for device = "gpu" where only the CPU provider runs fails loudly instead of
    silently running on the CPU."""
    model = dense_model([np.eye(2, dtype=np.float32), np.zeros(2, np.float32)])
    with pytest.raises(PluginError, match="gpu"):
        open_model(model.SerializeToString(), device="gpu")


def test_missing_onnxruntime_is_a_plugin_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without onnxruntime (an optional extra) a session request raises PluginError saying
    what to install; nothing imports it at agent start-up."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(PluginError, match=r"fedbus\[onnx\]"):
        require("onnxruntime")
    with pytest.raises(PluginError, match="onnxruntime is not installed"):
        open_model(b"", device="cpu")
    clean = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, agent.cli.main, agent.node, "
            "agent.plugin.check; print('onnxruntime' in sys.modules, 'onnx' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert clean.stdout.split() == ["False", "False"]
