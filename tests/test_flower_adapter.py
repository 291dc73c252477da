"""fedbus-flower: a real ``flwr.client.NumPyClient`` subclass and a real ``client_fn``
(against the installed flwr) run unchanged as the ``flower`` plugin, over a real mosquitto
and a real nats-server: parameters, fit config, metrics (bytes included), read-only arrays,
and the Flower ``Context`` a client_fn gets."""

from __future__ import annotations

import asyncio
import importlib
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from agent.brokers import EmbeddedBroker
from agent.bus.base import BusSettings
from agent.bus.url import bus_from_url
from agent.errors import PluginError
from agent.plugin.api import PluginContext
from agent.plugin.check import check_factory
from agent.plugin.check_values import wire
from agent.plugin.loader import CheckedPlugin, find_factory, load_plugin
from agent.roles.aggregator import Aggregator
from agent.roles.trainer import Trainer
from tests.helpers import aggregator_config, trainer_config

pytest.importorskip("flwr")

from fedbus_flower.flwr_api import Context, NumPyClient
from fedbus_flower.values import decode_bytes

pytestmark = pytest.mark.timeout(90)

#: What the clients below saw, for the assertions (appended from worker threads).
SEEN: list[dict[str, Any]] = []
_LOCK = threading.Lock()


def seen() -> list[dict[str, Any]]:
    """``SEEN`` of the module the plugin imported by path (pytest may import this file
    under another name, as another module object)."""
    module = importlib.import_module("tests.test_flower_adapter")
    found: list[dict[str, Any]] = module.SEEN
    return found


class LinearClient(NumPyClient):  # type: ignore[misc]
    """A Flower client written the Flower way: it trains its parameters in place."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def get_parameters(self, config: Mapping[str, Any]) -> list[np.ndarray]:
        return [np.zeros(3, np.float32), np.zeros((2, 2), np.float64)]

    def fit(
        self, parameters: list[np.ndarray], config: Mapping[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        for array in parameters:  # in place, the Flower way: the arrays must be writable
            np.add(array, float(config["lr"]) + self.offset, out=array)
        with _LOCK:
            SEEN.append({"verb": "fit", "config": dict(config), "offset": self.offset})
        return parameters, 2, {"train_loss": 0.25, "blob": b"\x00\x01", "n": np.int64(3)}

    def evaluate(
        self, parameters: list[np.ndarray], config: Mapping[str, Any]
    ) -> tuple[float, int, dict[str, Any]]:
        return float(parameters[0].mean()), 2, {"accuracy": 0.5}


def client_fn(context: Context) -> Any:
    """A Flower app's client_fn: the partition from node_config, settings from run_config."""
    with _LOCK:
        SEEN.append(
            {
                "verb": "client_fn",
                "node_config": dict(context.node_config),
                "run_config": dict(context.run_config),
            }
        )
    return LinearClient(offset=float(context.node_config["partition-id"])).to_client()


CLIENT_FN = {"client": "tests.test_flower_adapter:client_fn"}
NUMPY_CLIENT = {"client": "tests.test_flower_adapter:LinearClient"}


def _plugin(options: Mapping[str, Any], agent_id: str = "a0") -> CheckedPlugin:
    return load_plugin("flower", PluginContext(agent_id, dict(options)))


def test_fit_maps_config_metrics_and_read_only_arrays() -> None:
    """Read-only wire arrays reach the client writable; bytes metrics come back as
    base64 strings (and decode to the same bytes); numpy scalars as Python ones."""
    plugin = _plugin(CLIENT_FN)
    weights = wire(plugin.get_weights())
    assert not weights[0].flags.writeable
    result = plugin.fit(weights, {"lr": 0.5, "round": 1})
    assert np.allclose(result.weights[0], 0.5)
    assert result.weights[1].dtype == np.float64
    assert result.metrics["blob"] == "base64:AAE="
    assert decode_bytes(result.metrics["blob"]) == b"\x00\x01"
    assert result.metrics["n"] == 3
    assert type(result.metrics["n"]) is int


def test_client_fn_gets_a_flower_context_like_the_simulation_sets() -> None:
    seen().clear()
    plugin = _plugin(
        {**CLIENT_FN, "agent_index": 2, "num_agents": 5, "run_config": {"batch-size": 8}}
    )
    plugin.fit(plugin.get_weights(), {"lr": 0.1, "round": 4})
    made = [s for s in seen() if s["verb"] == "client_fn"]
    assert made[-1]["node_config"] == {"partition-id": 2, "num-partitions": 5}
    assert made[-1]["run_config"] == {"batch-size": 8, "lr": 0.1, "round": 4}
    assert [s["offset"] for s in seen() if s["verb"] == "fit"] == [2.0]


def test_num_examples_from_the_option_or_the_last_fit() -> None:
    """Joining reports option ``num_examples`` when set, else the last FitRes.num_examples
    (0, unknown, before the first fit)."""
    plugin = _plugin(NUMPY_CLIENT)
    assert plugin.num_examples() == 0
    plugin.fit(plugin.get_weights(), {"lr": 0.5})
    assert plugin.num_examples() == 2  # LinearClient.fit's num_examples
    assert _plugin({**NUMPY_CLIENT, "num_examples": 40}).num_examples() == 40
    with pytest.raises(PluginError, match="num_examples"):
        _plugin({**NUMPY_CLIENT, "num_examples": -1})


def test_bad_targets_are_plugin_errors() -> None:
    with pytest.raises(PluginError, match="required"):
        _plugin({})
    with pytest.raises(PluginError, match=r"package\.module:attribute"):
        _plugin({"client": "no_colon"})
    with pytest.raises(PluginError, match="no attribute"):
        _plugin({"client": "tests.test_flower_adapter:Nope"})
    with pytest.raises(PluginError, match="not a NumPyClient or a client_fn"):
        _plugin({"client": "tests.test_flower_adapter:SEEN"})


def test_the_adapter_conforms() -> None:
    _, factory = find_factory("flower")
    report = check_factory(factory, name="flower", options=NUMPY_CLIENT, fit_config={"lr": 0.5})
    assert report.passed, report.render()


@pytest.mark.broker
async def test_flower_clients_train_in_a_real_federation(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """Two agents over the broker, one a client_fn, one a NumPyClient subclass, two rounds
    of FedAvg with fit config lr = 0.5: each fit adds lr + partition-id, so each round moves
    the model by 0.5 + mean(0, 0) for the class (offset 0) and the client_fn of partition 0."""
    seen().clear()
    plugins = {
        "a0": _plugin({**CLIENT_FN, "agent_index": 0, "num_agents": 2}, "a0"),
        "a1": _plugin(NUMPY_CLIENT, "a1"),
    }
    config = aggregator_config(broker.url, tmp_path, agents=2, rounds=2)
    schedule = msgspec.structs.replace(config.aggregator, fit_config={"lr": 0.5})
    async with (
        bus_from_url(broker.url, BusSettings(client_id="a0")) as b0,
        bus_from_url(broker.url, BusSettings(client_id="a1")) as b1,
        bus_from_url(broker.url, BusSettings(client_id="agg")) as b2,
        asyncio.TaskGroup() as tg,
    ):
        tasks = [
            tg.create_task(
                Trainer(
                    config=trainer_config(a, broker.url, tmp_path), bus=b, plugin=plugins[a]
                ).run()
            )
            for a, b in (("a0", b0), ("a1", b1))
        ]
        summary = await Aggregator(
            config=msgspec.structs.replace(config, aggregator=schedule),
            bus=b2,
            plugin_name="flower",
            initial_weights=plugins["a0"].get_weights(),
        ).run()
        for task in tasks:
            task.cancel()
    assert [r.survivors for r in summary.rounds] == [["a0", "a1"]] * 2
    assert summary.rounds[-1].loss == pytest.approx(1.0)  # evaluate: the mean parameter
    assert summary.rounds[-1].accuracy == pytest.approx(0.5)
    fits = [s for s in seen() if s["verb"] == "fit"]
    assert len(fits) == 4
    assert all(s["config"]["lr"] == 0.5 for s in fits)
    assert sorted(s["config"]["round"] for s in fits) == [1, 1, 2, 2]
    run_configs = [s["run_config"] for s in seen() if s["verb"] == "client_fn" and s["run_config"]]
    assert {"lr": 0.5, "round": 2} in run_configs
