"""fedbus-torch: the state_dict as weights (names, order, dtypes, read-only input), device
and threads, the conformance suite on ``digits-cnn``, and its ONNX export run by
``fedbus predict``."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from agent.errors import ConfigError, PluginError
from agent.plugin.api import PluginContext
from agent.plugin.check import check_factory
from agent.plugin.check_values import wire
from tests.helpers import fedbus

torch = pytest.importorskip("torch")

from fedbus_torch import StateLayout, TorchTask, torch_plugin  # noqa: E402
from fedbus_torch.examples import digits_cnn  # noqa: E402
from fedbus_torch.runtime import cuda_problem, resolve_device, thread_count  # noqa: E402

pytestmark = pytest.mark.timeout(120)

#: One small shard (agent 0 of 10), one quick epoch: the checks take seconds.
SMALL = {"agent_index": 0, "num_agents": 10, "threads": 1}
QUICK = {"epochs": 1, "batch_size": 64, "lr": 0.05, "round": 1}


def _bn_net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))


def test_weights_are_the_state_dict_in_order_with_their_dtypes() -> None:
    """Parameters and buffers in state_dict order; BatchNorm's counter stays an int64 0-d
    array; the arrays own their memory (training later does not change them)."""
    net = _bn_net()
    layout = StateLayout(net)
    assert layout.names == list(net.state_dict())
    weights = layout.to_weights(net)
    tracked = weights[layout.names.index("1.num_batches_tracked")]
    assert tracked.dtype == np.int64
    assert tracked.shape == ()
    assert [w.dtype for w in weights][:2] == [np.float32, np.float32]
    before = weights[0].copy()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    assert np.array_equal(weights[0], before)
    assert all(w.flags.owndata and w.flags.writeable for w in weights)


def test_read_only_wire_arrays_load_and_are_copied() -> None:
    """Arrays decoded from a message (read-only views of its bytes) load without warning,
    and the module does not alias them."""
    net = _bn_net()
    layout = StateLayout(net)
    given = wire([np.full_like(w, 7) for w in layout.to_weights(net)])
    assert not given[0].flags.writeable
    layout.load(net, given)
    with torch.no_grad():
        net[0].weight.add_(1.0)
    assert float(given[0].flat[0]) == 7.0
    assert int(net.state_dict()["1.num_batches_tracked"]) == 7


def test_a_wrong_layout_is_refused_by_name() -> None:
    net = _bn_net()
    layout = StateLayout(net)
    weights = layout.to_weights(net)
    weights[-1] = weights[-1].astype(np.float32)  # the int64 counter sent as a float
    with pytest.raises(PluginError, match=r"1\.num_batches_tracked: expected int64"):
        layout.load(net, weights)


def test_bfloat16_travels_as_float32_and_comes_back() -> None:
    net = torch.nn.Linear(2, 2).to(torch.bfloat16)
    layout = StateLayout(net)
    weights = layout.to_weights(net)
    assert weights[0].dtype == np.float32
    layout.load(net, [w + 1 for w in weights])
    assert net.weight.dtype == torch.bfloat16


def test_device_and_threads() -> None:
    """cpu is cpu; auto is cuda only when torch can compute on one, else the CPU without a
    warning; cuda without one, or an unknown device, is a ConfigError naming the option; 0
    threads is this machine's share per agent, never below one."""
    assert resolve_device("cpu").type == "cpu"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "no NVIDIA driver" warning would fail here
        auto = resolve_device("auto")
    assert auto.type == ("cuda" if cuda_problem() is None else "cpu")
    if cuda_problem() is not None:
        with pytest.raises(ConfigError, match=r"device = 'cuda', but torch "):
            resolve_device("cuda")
    with pytest.raises(ConfigError, match=r"\[plugin.options\] device"):
        resolve_device("tpu")
    with pytest.raises(ConfigError, match="device"):
        digits_cnn.create(PluginContext("a", {**SMALL, "device": "tpu"}))
    assert thread_count(3, 10) == 3
    assert thread_count(0, 10_000) == 1


def test_cuda_without_a_gpu_stops_fedbus_run_with_one_line(tmp_path: Path) -> None:
    """`fedbus run` of a digits-cnn trainer with device = "cuda" on a machine without a
    usable GPU: exit status 2 and one error line naming the option and the README, no
    traceback (the plugin is built before the bus is dialled: no broker needed)."""
    if cuda_problem() is None:
        pytest.skip("this machine has a usable CUDA device")
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""role = "trainer"
agent_id = "a1"
federation = "fed"
bus_url = "mqtt://127.0.0.1:1"
state_dir = "{tmp_path / "state"}"

[plugin]
name = "digits-cnn"
[plugin.options]
device = "cuda"
agent_index = 0
num_agents = 10
threads = 1
"""
    )
    run = fedbus("run", "--config", str(config))
    assert run.returncode == 2, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    (line,) = [x for x in run.stderr.splitlines() if x.startswith("fedbus: error:")]
    assert "device = 'cuda'" in line
    assert "README" in line


def test_plugin_sets_its_threads_and_rejects_unknown_options() -> None:
    plugin = digits_cnn.create(PluginContext("a", SMALL))
    assert plugin.threads == 1
    assert torch.get_num_threads() == 1
    with pytest.raises(PluginError, match="unknown option"):
        digits_cnn.create(PluginContext("a", {**SMALL, "colour": "red"}))
    with pytest.raises(PluginError, match="required"):
        digits_cnn.create(PluginContext("a", {"num_agents": 2}))


def test_every_agent_starts_from_the_same_model() -> None:
    a = digits_cnn.create(PluginContext("a", SMALL)).get_weights()
    b = digits_cnn.create(PluginContext("b", {**SMALL, "agent_index": 3})).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_digits_cnn_conforms(tmp_path: Path) -> None:
    """`fedbus plugin check`'s suite, export included, passes on digits-cnn."""
    report = check_factory(digits_cnn.create, name="digits-cnn", options=SMALL, fit_config=QUICK)
    assert report.passed, report.render()


def test_a_third_party_task_with_a_regression_loss_conforms() -> None:
    """Any module and datasets: a linear regression with MSE, no accuracy."""
    x = torch.linspace(0, 1, 32).reshape(-1, 1)
    data = torch.utils.data.TensorDataset(x, 2 * x)
    task = TorchTask(
        name="line",
        model=lambda context: torch.nn.Linear(1, 1),
        train_data=lambda context: data,
        eval_data=lambda context: data,
        loss=torch.nn.MSELoss,
        classifier=False,
    )
    report = check_factory(torch_plugin(task), name="line", options={"threads": 1})
    assert report.passed, report.render()
    plugin = torch_plugin(task)(PluginContext("a", {"threads": 1}))
    assert "accuracy" not in plugin.evaluate(plugin.get_weights(), {}).metrics


def test_onnx_export_runs_in_fedbus_predict(tmp_path: Path) -> None:
    """The exported graph, run by `fedbus predict` on flat 64-pixel rows, predicts what the
    torch model predicts."""
    plugin = digits_cnn.create(PluginContext("a", SMALL))
    weights = plugin.fit(plugin.get_weights(), QUICK).weights
    written = plugin.export(weights, tmp_path / "model")
    assert written == tmp_path / "model.onnx"
    rows = plugin.eval_set.tensors[0][:5].numpy()
    np.save(tmp_path / "rows.npy", rows)
    run = fedbus("predict", str(written), str(tmp_path / "rows.npy"), "--device", "cpu")
    assert run.returncode == 0, run.stderr
    predicted = [int(line.split("\t")[1]) for line in run.stdout.splitlines()]
    plugin.layout.load(plugin.model, weights)
    plugin.model.eval()
    with torch.no_grad():
        expected = plugin.model(torch.from_numpy(rows)).argmax(dim=1).tolist()
    assert predicted == expected
