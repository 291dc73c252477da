"""Integer arrays (a BatchNorm's int64 ``num_batches_tracked``) advance under SecAgg+ and in
async mode, over a real mosquitto and a real nats-server: the new model's counter is the
lower median of what the survivors sent, still int64, and the aggregator never sees a float
value of an update (``agent.strategy.carried``, ``agent.roles.trainer.carried``,
``agent.roles.aggregator.secure_carried``).

``Counting`` has two float arrays, an int64 counter that every fit advances by the agent's
own number of batches, and an int32 array [batches, -batches] (so the median is per
element): with batches 1, 2 and 7 from a counter c, the lower median is c + 2 and the second
element's is -2.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from agent.async_settings import AsyncConfig
from agent.brokers import EmbeddedBroker
from agent.config import (
    AgentConfig,
    SecAggConfig,
    SecureAggregation,
    TrainingMode,
    TransferConfig,
)
from agent.messages.bodies import MaskedInput, ModelUpdate
from agent.messages.envelope import Message
from agent.messages.tensors import to_arrays
from agent.plugin.api import FitResult, Scalar, Weights
from agent.plugin.loader import CheckedPlugin
from agent.roles.aggregator.buffered import Buffered
from agent.roles.aggregator.fit import CohortFit
from agent.state import read_weights
from tests.helpers import LOOSE, ToyPlugin, aggregator_config, federate_over, trainer_config

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]

BATCHES = {"a": 1, "b": 2, "c": 7}


class Counting(ToyPlugin):
    """Float arrays filled with ``value``; the int64 counter advanced by ``batches``; the
    int32 array set to [batches, -batches]."""

    def __init__(self, value: float, batches: int) -> None:
        super().__init__(value, 1)
        self.batches = batches

    def get_weights(self) -> Weights:
        return [*super().get_weights(), np.array(0, np.int64), np.zeros(2, np.int32)]

    def fit(self, weights: Weights, config: Mapping[str, Scalar]) -> FitResult:
        floats = [np.full_like(w, self.value) for w in weights[:2]]
        counter = np.array(int(weights[2]) + self.batches, np.int64)
        pair = np.array([self.batches, -self.batches], np.int32)
        return FitResult([*floats, counter, pair], self.n, {"train_loss": self.value})


class BigCounting(Counting):
    """``Counting`` with a 20,000-value float array: its masked input (80 KB of ring words)
    travels in 64 KiB chunks, the carried arrays in the bulk after the vector."""

    def get_weights(self) -> Weights:
        return [np.zeros((200, 100), np.float32), *super().get_weights()[1:]]


class Seen:
    """What reached the aggregator's update listeners (spied on before it is built)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        #: (sender, body) in the order the listeners got them
        self.sent: list[tuple[str, Any]] = []
        for cls, name in [(CohortFit, "on_secagg"), (CohortFit, "on_update")]:
            self._spy(monkeypatch, cls, name)
        self._spy(monkeypatch, Buffered, "on_update")

    def _spy(self, monkeypatch: pytest.MonkeyPatch, cls: Any, name: str) -> None:
        real = getattr(cls, name)

        async def spy(inner: Any, message: Message[Any]) -> None:
            self.sent.append((message.sender, message.body))
            await real(inner, message)

        monkeypatch.setattr(cls, name, spy)

    @property
    def bodies(self) -> list[Any]:
        return [body for _, body in self.sent]

    def only_masked(self) -> list[MaskedInput]:
        """The masked inputs; asserts no update travelled in the clear and nothing but
        integer arrays travelled beside the masked vectors."""
        assert not [b for b in self.bodies if isinstance(b, ModelUpdate)]
        masked = [b for b in self.bodies if isinstance(b, MaskedInput)]
        assert masked
        for body in masked:
            assert body.vector.dtype in ("<u4", "<u8")
            assert [a.dtype for a in to_arrays(body.carried)] == [np.int64, np.int32]
        return masked


def _plugins() -> dict[str, CheckedPlugin]:
    return {
        a: CheckedPlugin("toy", Counting(float(i + 1), n))
        for i, (a, n) in enumerate(BATCHES.items())
    }


def _config(url: str, tmp_path: Path, rounds: int, **kw: Any) -> AgentConfig:
    config = aggregator_config(url, tmp_path, agents=3, rounds=rounds, round_timeout=10.0)
    schedule = msgspec.structs.replace(
        config.aggregator, min_fit_clients=3, eval_every=0, eval_timeout=2.0, **kw
    )
    return msgspec.structs.replace(config, aggregator=schedule)


def _round_model(config: AgentConfig, r: int) -> Weights:
    return read_weights(
        config.state_dir / "runs" / "run-0001" / "rounds" / f"{r:04d}" / "model.npz"
    )


def _check_counters(model: Weights, counter: int, pair: list[int]) -> None:
    assert model[2].dtype == np.int64
    assert int(model[2]) == counter
    assert model[3].dtype == np.int32
    assert model[3].tolist() == pair


SECURE = {
    "secure_aggregation": SecureAggregation.SECAGG_PLUS,
    "secagg": SecAggConfig(stage_timeout=5.0),
}


async def test_counters_advance_under_secagg(
    broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sync SecAgg+, three agents, two rounds: every update travelled masked, with only its
    integer arrays beside it; the counter is the lower median, 2 then 4, in int64."""
    seen = Seen(monkeypatch)
    config = _config(broker.url, tmp_path, 2, **SECURE)
    summary, _ = await federate_over(
        broker.url,
        _plugins(),
        config,
        lambda agent_id: trainer_config(agent_id, broker.url, tmp_path),
    )
    assert [r.survivors for r in summary.rounds] == [sorted(BATCHES)] * 2
    masked = seen.only_masked()
    assert sorted(int(to_arrays(b.carried)[0]) for b in masked) == [1, 2, 3, 4, 7, 9]
    _check_counters(_round_model(config, 1), 2, [2, -2])
    _check_counters(_round_model(config, 2), 4, [2, -2])
    assert np.allclose(_round_model(config, 2)[0], 2.0, atol=1e-3)  # the floats' mean


async def test_counters_advance_in_async_mode(
    nats_server: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FedBuff in the clear, K = 3, two versions: each version's integer arrays are the
    lower median of its buffer's updates (three in arrival order; an agent that filled two
    places counts with its later one), whatever version each trained from."""
    seen = Seen(monkeypatch)
    url = nats_server.url
    config = _config(
        url,
        tmp_path,
        2,
        mode=TrainingMode.ASYNC,
        async_=AsyncConfig(concurrency=3, buffer_size=3),
    )
    summary, _ = await federate_over(
        url, _plugins(), config, lambda a: trainer_config(a, url, tmp_path)
    )
    updates = [(who, to_arrays(b.tensors)) for who, b in seen.sent if isinstance(b, ModelUpdate)]
    for r in (1, 2):
        last = dict(updates[3 * (r - 1) : 3 * r])  # agent -> its later update's arrays
        assert sorted(last) == summary.rounds[r - 1].survivors
        lower = (len(last) - 1) // 2
        counters = sorted(int(w[2]) for w in last.values())
        pair = [sorted(int(w[3][i]) for w in last.values())[lower] for i in (0, 1)]
        _check_counters(_round_model(config, r), counters[lower], pair)
    assert int(_round_model(config, 1)[2]) > 0


async def test_counters_advance_under_async_secagg(
    mosquitto: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FedBuff under SecAgg+, K = 3: the agents hold their updates, the buffer's secure
    round unmasks their sum, and the counter each sent beside its masked input makes the
    version's median (2), in int64; nothing travelled in the clear."""
    seen = Seen(monkeypatch)
    url = mosquitto.url
    config = _config(
        url,
        tmp_path,
        1,
        mode=TrainingMode.ASYNC,
        async_=AsyncConfig(concurrency=3, buffer_size=3),
        **SECURE,
    )
    summary, _ = await federate_over(
        url, _plugins(), config, lambda a: trainer_config(a, url, tmp_path)
    )
    assert [r.survivors for r in summary.rounds] == [sorted(BATCHES)]
    masked = seen.only_masked()
    assert sorted(int(to_arrays(b.carried)[0]) for b in masked) == [1, 2, 7]
    _check_counters(_round_model(config, 1), 2, [2, -2])


async def test_a_trainer_may_keep_its_integer_arrays(
    mosquitto: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``[trainer] reveal_integer_arrays = false`` on every agent: nothing travels beside
    the masked inputs and the counters keep the model in force's values."""
    seen = Seen(monkeypatch)
    url = mosquitto.url

    def quiet(agent_id: str) -> AgentConfig:
        config = trainer_config(agent_id, url, tmp_path)
        trainer = msgspec.structs.replace(config.trainer, reveal_integer_arrays=False)
        return msgspec.structs.replace(config, trainer=trainer)

    config = _config(url, tmp_path, 1, **SECURE)
    summary, _ = await federate_over(url, _plugins(), config, quiet)
    assert [r.survivors for r in summary.rounds] == [sorted(BATCHES)]
    masked = [b for b in seen.bodies if isinstance(b, MaskedInput)]
    assert len(masked) == 3
    assert all(b.carried == [] for b in masked)
    _check_counters(_round_model(config, 1), 0, [0, 0])


async def test_counters_travel_in_chunked_masked_inputs(
    mosquitto: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SecAgg+ with ``[transfer] chunk_size`` = 64 KiB: each masked input is chunked, its
    carried arrays reassembled from the bulk with the vector; the counter is the median."""
    seen = Seen(monkeypatch)
    url, chunks = mosquitto.url, TransferConfig(chunk_size=64 * 1024, timeout=5.0)
    plugins = {
        a: CheckedPlugin("toy", BigCounting(float(i + 1), n))
        for i, (a, n) in enumerate(BATCHES.items())
    }
    config = _config(url, tmp_path, 1, robust=LOOSE, **SECURE)  # 20,000 values move by 2
    config = msgspec.structs.replace(config, transfer=chunks)
    summary, _ = await federate_over(
        url,
        plugins,
        config,
        lambda a: msgspec.structs.replace(trainer_config(a, url, tmp_path), transfer=chunks),
    )
    assert [r.survivors for r in summary.rounds] == [sorted(BATCHES)]
    masked = seen.only_masked()
    assert all(len(b.vector.data) > chunks.chunk_size for b in masked)
    assert sorted(int(to_arrays(b.carried)[0]) for b in masked) == [1, 2, 7]
    _check_counters(_round_model(config, 1), 2, [2, -2])


def _bn_plugin(seed: int) -> CheckedPlugin:
    torch = pytest.importorskip("torch")
    from fedbus_torch import TorchTask, torch_plugin

    from agent.plugin.api import PluginContext

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(48, 4, generator=gen)
    data = torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long())
    task = TorchTask(
        name="bn",
        model=lambda context: torch.nn.Sequential(
            torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 2)
        ),
        train_data=lambda context: data,
        eval_data=lambda context: data,
        fit_config={"epochs": 1, "batch_size": 16, "lr": 0.1},
    )
    return CheckedPlugin("toy", torch_plugin(task)(PluginContext(f"a{seed}", {"threads": 1})))


async def test_a_torch_batchnorm_counter_advances_under_secagg(
    nats_server: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fedbus-torch, a BatchNorm model, three agents, SecAgg+ over nats-server, two rounds
    of 3 batches each: ``num_batches_tracked`` is 3 then 6, int64; the float arrays moved;
    every update travelled masked."""
    plugins = {f"a{i}": _bn_plugin(i) for i in range(3)}
    seen = Seen(monkeypatch)
    url = nats_server.url
    initial = plugins["a0"].get_weights()
    names = plugins["a0"].plugin.layout.names  # type: ignore[attr-defined]
    counter = names.index("1.num_batches_tracked")
    config = _config(url, tmp_path, 2, **SECURE)
    summary, _ = await federate_over(
        url, plugins, config, lambda a: trainer_config(a, url, tmp_path)
    )
    assert [r.survivors for r in summary.rounds] == [sorted(plugins)] * 2
    masked = [b for b in seen.bodies if isinstance(b, MaskedInput)]
    assert len(masked) == 6
    assert not [b for b in seen.bodies if isinstance(b, ModelUpdate)]
    assert all([t.dtype for t in b.carried] == ["<i8"] for b in masked)
    for r, expected in [(1, 3), (2, 6)]:
        model = _round_model(config, r)
        assert [a.dtype for a in model] == [a.dtype for a in initial]
        assert int(model[counter]) == expected
    assert not np.allclose(_round_model(config, 2)[0], initial[0])
