"""Integer arrays (BatchNorm's int64 ``num_batches_tracked``) are carried, not averaged and
not masked: the seam in ``agent.strategy.update``, then a torch model with BatchNorm through
SecAgg+ rounds on the in-memory bus, its dtypes intact; on both paths the new model takes the
survivors' median counter (``agent.strategy.carried``)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest

from agent.config import SecAggConfig, SecureAggregation
from agent.plugin.api import PluginContext
from agent.plugin.loader import CheckedPlugin
from agent.robust.settings import RobustConfig
from agent.strategy.adaptive import FedAdam
from agent.strategy.carried import CarriedValues
from agent.strategy.fedavg import FedAvg
from agent.strategy.update import (
    AggregatedUpdate,
    ClientResult,
    averaged_size,
    masked_values,
    mean_update,
    model_delta,
    split,
)
from tests.helpers import aggregator_config, federate_in_memory, trainer_config

torch = pytest.importorskip("torch")

from fedbus_torch import TorchTask, torch_plugin  # noqa: E402

pytestmark = pytest.mark.timeout(120)
#: A torch fit's first call warms torch up: on a loaded machine round 1's fits took over 10 s
#: (all three agents missed the deadline, 1 run in 8 with two CPU hogs). A bound, not a duration.
ROUND_TIMEOUT = 30.0

MODEL = [np.ones((2, 2), np.float32), np.array(5, np.int64), np.zeros(3, np.float64)]


def test_integer_arrays_have_no_delta_and_no_place_in_the_masked_vector() -> None:
    trained = [np.full((2, 2), 3, np.float32), np.array(9, np.int64), np.ones(3)]
    delta = model_delta(trained, MODEL)
    assert np.array_equal(delta[0], np.full((2, 2), 2.0))
    assert np.array_equal(delta[1], np.zeros(()))
    assert averaged_size(MODEL) == 4 + 3
    flat = masked_values(delta, MODEL)
    assert flat.shape == (7,)
    back = split(flat, MODEL)
    assert [b.shape for b in back] == [(2, 2), (), (3,)]
    assert all(np.array_equal(a, b) for a, b in zip(back, delta, strict=True))


@pytest.mark.parametrize("strategy", [FedAvg(), FedAdam()])
def test_every_strategy_keeps_integer_arrays_bit_exact(strategy: FedAvg) -> None:
    big = [np.ones(2, np.float32), np.array(2**62 + 1, np.int64)]
    results = [ClientResult("a", [np.full(2, 3, np.float32), np.array(7, np.int64)], 1, {})]
    new = strategy.step(big, mean_update(big, results))
    assert new[1].dtype == np.int64
    assert int(new[1]) == 2**62 + 1  # float64 arithmetic would have rounded it
    assert new[0].dtype == np.float32
    assert float(new[0][0]) > 1.0


def test_a_secure_update_of_a_model_with_integer_arrays_splits_back() -> None:
    update = AggregatedUpdate(split(np.arange(7.0), MODEL), 1, ("a",))
    new = FedAvg().step(MODEL, update)
    assert [a.dtype for a in new] == [np.float32, np.int64, np.float64]
    assert int(new[1]) == 5


def test_carried_arrays_take_the_survivors_lower_median_in_their_dtype() -> None:
    carried = CarriedValues(MODEL)
    for agent, count in [("a", 7), ("b", 9), ("c", 2**62), ("d", 8)]:
        carried.add(agent, [MODEL[0], np.array(count, np.int64), MODEL[2]])
    new = carried.apply(list(MODEL), ["a", "b", "c", "d"])
    assert new[1].dtype == np.int64
    assert int(new[1]) == 8  # one device's 2**62 moves it one rank, no further
    assert new[0] is MODEL[0]  # float arrays are the strategy's
    assert int(carried.apply(list(MODEL), ["a", "b"])[1]) == 7  # the survivors only
    assert int(carried.apply(list(MODEL), [])[1]) == 5  # nobody: the model in force's


def _bn_task(seed: int) -> TorchTask:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(48, 4, generator=gen)
    data = torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long())
    return TorchTask(
        name="bn",
        model=lambda context: torch.nn.Sequential(
            torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 2)
        ),
        train_data=lambda context: data,
        eval_data=lambda context: data,
        fit_config={"epochs": 1, "batch_size": 16, "lr": 0.1},
    )


async def test_batchnorm_model_through_secagg_rounds_keeps_dtypes(tmp_path: Path) -> None:
    """Three torch agents, SecAgg+ on, two rounds: every update travelled masked, the global
    model has the initial dtypes, its float arrays moved, and the int64 counter (which every
    agent advanced by 3 batches a round, and sent beside its masked input) is the survivors'
    median, 3 then 6, not a masked float mean nor the initial 0."""
    # Named "toy": the in-memory federation's configs name that plugin.
    plugins = {
        f"a{i}": CheckedPlugin(
            "toy", torch_plugin(_bn_task(i))(PluginContext(f"a{i}", {"threads": 1}))
        )
        for i in range(3)
    }
    initial = plugins["a0"].get_weights()
    names = plugins["a0"].plugin.layout.names  # type: ignore[attr-defined]
    counter = names.index("1.num_batches_tracked")
    config = aggregator_config("mem://", tmp_path, agents=3, round_timeout=ROUND_TIMEOUT)
    schedule = msgspec.structs.replace(
        config.aggregator,
        min_fit_clients=3,
        secure_aggregation=SecureAggregation.SECAGG_PLUS,
        secagg=SecAggConfig(stage_timeout=5.0),
    )
    summary, trainers = await federate_in_memory(
        plugins,
        msgspec.structs.replace(config, aggregator=schedule),
        lambda agent_id: trainer_config(agent_id, "mem://", tmp_path),
        initial_weights=initial,
    )
    assert [r.survivors for r in summary.rounds] == [sorted(plugins)] * 2
    model = trainers["a0"].model
    assert model is not None
    final = model.weights
    assert [a.dtype for a in final] == [a.dtype for a in initial]
    assert final[counter].dtype == np.int64
    assert int(initial[counter]) == 0
    assert int(final[counter]) == 6  # 48 examples / 16 a batch, two rounds
    assert not np.allclose(final[0], initial[0])


@pytest.mark.parametrize("norm_factor", [0.0, 10.0])  # streamed (fold.py), and kept whole
async def test_batchnorm_counters_advance_in_the_clear(tmp_path: Path, norm_factor: float) -> None:
    """Three torch agents in the clear, two rounds of 3 batches each: the global model's
    int64 counter is the survivors' median, 3 then 6, not the initial 0."""
    plugins = {
        f"a{i}": CheckedPlugin(
            "toy", torch_plugin(_bn_task(i))(PluginContext(f"a{i}", {"threads": 1}))
        )
        for i in range(3)
    }
    initial = plugins["a0"].get_weights()
    counter = plugins["a0"].plugin.layout.names.index("1.num_batches_tracked")  # type: ignore[attr-defined]
    config = aggregator_config("mem://", tmp_path, agents=3, round_timeout=ROUND_TIMEOUT)
    schedule = msgspec.structs.replace(
        config.aggregator, min_fit_clients=3, robust=RobustConfig(norm_factor=norm_factor)
    )
    summary, trainers = await federate_in_memory(
        plugins,
        msgspec.structs.replace(config, aggregator=schedule),
        lambda agent_id: trainer_config(agent_id, "mem://", tmp_path),
        initial_weights=initial,
    )
    assert [r.survivors for r in summary.rounds] == [sorted(plugins)] * 2
    model = trainers["a0"].model
    assert model is not None
    assert model.weights[counter].dtype == np.int64
    assert int(model.weights[counter]) == 6
