"""The strategies (FedAvg weighting, FedAvgM, FedAdagrad/FedAdam/FedYogi against hand-computed
rounds, their state through persistence, FedProx's μ in the fit config, FedAdam the same with
SecAgg+ on and off), weighted means, and cohort sampling."""

from __future__ import annotations

import random
from pathlib import Path

import msgspec
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import AgentConfig, SecAggConfig, SecureAggregation, StrategyConfig, StrategyName
from agent.errors import ConfigError, RoundError
from agent.roles.aggregator.cohort import cohort_size, sample_cohort
from agent.roles.aggregator.persistence import Checkpoint, RunStore
from agent.roles.aggregator.records import GlobalState
from agent.state import read_weights
from agent.strategy.adaptive import FedAdagrad, FedAdam, FedYogi
from agent.strategy.base import Strategy
from agent.strategy.factory import build_strategy
from agent.strategy.fedavg import FedAvg, FedAvgM
from agent.strategy.update import (
    AggregatedUpdate,
    ClientResult,
    mean_update,
    model_delta,
    weighted_mean,
)
from tests.helpers import aggregator_config, federate_in_memory, toy, trainer_config

pytestmark = pytest.mark.timeout(30)


def result(value: float, n: int) -> ClientResult:
    return ClientResult(
        f"a{n}", [np.full((2, 2), value, np.float32), np.full(3, value, np.float32)], n, {}
    )


def test_fedavg_weights_by_num_examples() -> None:
    """Two clients with 1 and 3 examples: the mean is 1/4 and 3/4 of their weights."""
    current = [np.zeros((2, 2), np.float32), np.zeros(3, np.float32)]
    out = FedAvg().aggregate(current, [result(0.0, 1), result(4.0, 3)])
    np.testing.assert_allclose(out[0], 3.0)
    np.testing.assert_allclose(out[1], 3.0)
    assert [a.dtype for a in out] == [np.float32, np.float32]


@given(st.lists(st.tuples(st.floats(-100, 100), st.integers(1, 1000)), min_size=1, max_size=8))
def test_fedavg_equals_weighted_mean(pairs: list[tuple[float, int]]) -> None:
    """For any clients, FedAvg equals sum(n_k x_k) / sum(n_k), computed in float64."""
    current = [np.zeros((2, 2), np.float64), np.zeros(3, np.float64)]
    results = [
        ClientResult(str(i), [np.full((2, 2), v), np.full(3, v)], n, {})
        for i, (v, n) in enumerate(pairs)
    ]
    expected = sum(v * n for v, n in pairs) / sum(n for _, n in pairs)
    out = FedAvg().aggregate(current, results)
    np.testing.assert_allclose(out[0], expected, rtol=1e-12, atol=1e-9)


def test_fedavg_with_nothing_to_average_raises() -> None:
    """No survivors is a RoundError, never a division by zero."""
    with pytest.raises(RoundError):
        FedAvg().aggregate([np.zeros(1)], [])


def test_weighted_mean() -> None:
    """weighted_mean weights by num_examples and is NaN for nothing."""
    assert weighted_mean([(1.0, 1), (0.0, 3)]) == 0.25
    assert np.isnan(weighted_mean([]))


@pytest.mark.parametrize(
    ("available", "fraction", "lo", "hi", "expected"),
    [
        (10, 1.0, 2, 100, 10),
        (10, 0.3, 2, 100, 3),
        (10, 0.01, 2, 100, 2),
        (10, 1.0, 2, 4, 4),
        (1, 1.0, 2, 10, 0),
        (3, 0.5, 3, 10, 3),
    ],
)
def test_cohort_size(available: int, fraction: float, lo: int, hi: int, expected: int) -> None:
    """ceil(fraction * available), clamped to [min, max]; 0 when fewer than min are available."""
    assert cohort_size(available, fraction=fraction, min_clients=lo, max_clients=hi) == expected


def test_sample_cohort_is_a_seeded_subset() -> None:
    """The cohort is a sorted subset of the available agents, reproducible from the seed."""
    agents = [f"a{i}" for i in range(20)]
    a = sample_cohort(agents, fraction=0.25, min_clients=2, max_clients=10, rng=random.Random(7))
    b = sample_cohort(agents, fraction=0.25, min_clients=2, max_clients=10, rng=random.Random(7))
    assert a == b == sorted(a)
    assert len(a) == 5
    assert set(a) <= set(agents)


# -- the server optimizers on the seam, against hand-computed rounds ---------------------


def update(*deltas: float) -> AggregatedUpdate:
    """Δ = [[d0], [d1, d1]]: one scalar per model array (two arrays, shapes (1,) and (2,))."""
    d = [np.array([deltas[0]]), np.full(2, deltas[-1])]
    return AggregatedUpdate(d, total_weight=3, survivors=("a", "b"))


def run(strategy: Strategy, deltas: list[float]) -> list[float]:
    """x_0 = 0 (float32 arrays); the first array's value after each round."""
    x = [np.zeros(1, np.float32), np.zeros(2, np.float32)]
    out = []
    for d in deltas:
        x = strategy.step(x, update(d))
        assert [a.dtype for a in x] == [np.float32, np.float32]
        assert [a.shape for a in x] == [(1,), (2,)]
        np.testing.assert_array_equal(x[1], x[0][0])  # element-wise, the same in each array
        out.append(float(x[0][0]))
    return out


def test_fedavg_steps_by_the_server_learning_rate() -> None:
    """x_{t+1} = x_t + η Δ_t: η = 1 takes the mean, η = 0.5 half of it."""
    assert run(FedAvg(), [1.0, -0.5]) == pytest.approx([1.0, 0.5])
    assert run(FedAvg(server_lr=0.5), [1.0, -0.5]) == pytest.approx([0.5, 0.25])


def test_fedavgm_by_hand() -> None:
    """Hsu et al. 2019 with β = 0.9, η = 0.1 and Δ = 1, 1, -2:
    v = 1, 1.9, -0.29; x = 0.1, 0.29, 0.261."""
    assert run(FedAvgM(server_lr=0.1, momentum=0.9), [1.0, 1.0, -2.0]) == pytest.approx(
        [0.1, 0.29, 0.261], rel=1e-6
    )


# Reddi et al. 2021, Algorithm 2 with η = 1, β1 = 0.9, β2 = 0.99, τ = 0.1 (v_{-1} = τ² = 0.01),
# Δ = 1, -0.5, 0.25: m = 0.1, 0.04, 0.061 for every variant, and
#   Adagrad v = 1.01, 1.26, 1.3225
#   Adam    v = 0.0199, 0.022201, 0.02260399
#   Yogi    v = 0.02, 0.0225, 0.023125   (Δ² > v each round: v grows by (1 - β2) Δ²)
# x_{t+1} = x_t + m_t / (√v_t + τ); e.g. Yogi round 2: 0.41421 + 0.04 / (0.15 + 0.1).
ADAPTIVE = {
    "adagrad": (FedAdagrad, [0.0904987562, 0.1232186671, 0.1720186671], [1.01, 1.26, 1.3225]),
    "adam": (FedAdam, [0.4148218161, 0.5754643864, 0.8191269296], [0.0199, 0.022201, 0.02260399]),
    "yogi": (FedYogi, [0.4142135624, 0.5742135624, 0.8162107326], [0.02, 0.0225, 0.023125]),
}


@pytest.mark.parametrize("name", sorted(ADAPTIVE))
def test_adaptive_by_hand(name: str) -> None:
    """Three rounds of each Algorithm 2 variant equal the hand-computed x, m and v."""
    make, xs, vs = ADAPTIVE[name]
    strategy = make(server_lr=1.0, beta1=0.9, beta2=0.99, tau=0.1)
    assert run(strategy, [1.0, -0.5, 0.25]) == pytest.approx(xs, rel=1e-6)
    state = strategy.state()
    assert set(state) == {"m_0", "m_1", "v_0", "v_1"}
    np.testing.assert_allclose(state["m_0"], [0.061])
    np.testing.assert_allclose(state["v_0"], [vs[-1]])
    np.testing.assert_allclose(state["v_1"], [vs[-1]] * 2)


def test_yogi_shrinks_v_when_the_delta_is_small() -> None:
    """sign(v - Δ²) = +1 when Δ² < v, so v_t = v - (1 - β2) Δ² (Yogi's additive decrease).
    Hand: v_{-1} = 0.01, Δ = 0.05 → v = 0.01 - 0.01·0.0025."""
    yogi = FedYogi(server_lr=1.0, beta1=0.9, beta2=0.99, tau=0.1)
    yogi.step([np.zeros(1, np.float32), np.zeros(2, np.float32)], update(0.05))
    np.testing.assert_allclose(yogi.state()["v_0"], [0.01 - 0.01 * 0.0025])


@pytest.mark.parametrize("name", list(StrategyName))
async def test_state_round_trips_through_the_run_store(tmp_path: Path, name: StrategyName) -> None:
    """Two rounds, the state saved as rounds/0002/strategy.npz and loaded into a fresh
    strategy: its third round equals the uninterrupted one's (plain arrays, no pickle)."""
    config = StrategyConfig(name=name, tau=0.1)
    whole, resumed = build_strategy(config), build_strategy(config)
    x = [np.zeros(1, np.float32), np.zeros(2, np.float32)]
    for d in (1.0, -0.5):
        x = whole.step(x, update(d))
    store = RunStore(tmp_path)
    ckpt = Checkpoint("run-0001", 2, 2, GlobalState.of(2, x).sha256, [])
    await store.commit(ckpt, GlobalState.of(2, x), strategy=whole.state())
    assert (tmp_path / "rounds" / "0002" / "strategy.npz").is_file()
    resumed.load_state(store.load_strategy(2))
    for a, b in zip(whole.step(x, update(0.25)), resumed.step(x, update(0.25)), strict=True):
        np.testing.assert_array_equal(a, b)


def test_mean_update_is_the_weighted_mean_delta() -> None:
    """Δ = Σ n_k (w_k - x) / Σ n_k in float64, with the weighted train loss; model_delta is
    trained - base."""
    current = [np.full((2, 2), 1.0, np.float32), np.full(3, 1.0, np.float32)]
    a = ClientResult("a", [np.full((2, 2), 2.0), np.full(3, 2.0)], 1, {"train_loss": 1.0})
    b = ClientResult("b", [np.full((2, 2), 5.0), np.full(3, 5.0)], 3, {"train_loss": 3.0})
    up = mean_update(current, [b, a])
    np.testing.assert_allclose(up.delta[0], 3.25)
    assert [d.dtype for d in up.delta] == [np.float64, np.float64]
    assert (up.total_weight, up.survivors, up.train_loss) == (4, ("a", "b"), 2.5)
    np.testing.assert_array_equal(model_delta(a.weights, current)[1], [1.0, 1.0, 1.0])


def test_strategy_config() -> None:
    """[aggregator.strategy] decodes, defaults to FedAvg, refuses a decay >= 1 and a
    negative μ; only FedProx adds proximal_mu to the fit config."""
    base = 'role = "aggregator"\nagent_id = "a"\nfederation = "f"\nbus_url = "mem://"\n'
    base += 'state_dir = "/tmp/x"\n[plugin]\nname = "toy"\n'
    assert AgentConfig.parse(base).aggregator.strategy.name is StrategyName.FEDAVG
    parsed = AgentConfig.parse(base + '[aggregator.strategy]\nname = "fedyogi"\ntau = 0.01\n')
    assert parsed.aggregator.strategy == StrategyConfig(name=StrategyName.FEDYOGI, tau=0.01)
    for bad in ("beta1 = 1.0", "proximal_mu = -1", 'name = "sgd"'):
        with pytest.raises(ConfigError):
            AgentConfig.parse(base + f"[aggregator.strategy]\n{bad}\n")
    prox = StrategyConfig(name=StrategyName.FEDPROX, proximal_mu=0.1)
    assert prox.fit_config() == {"proximal_mu": 0.1}
    assert StrategyConfig(name=StrategyName.FEDADAM).fit_config() == {}
    assert isinstance(build_strategy(prox), FedAvg)


# -- in memory: one seam for both fit paths ------------------------------------------------


async def test_fedprox_sends_proximal_mu_to_every_fit(tmp_path: Path) -> None:
    """With name = "fedprox" every fit config carries proximal_mu next to fit_config's keys."""
    plugins = {"a1": toy(1.0, 1), "a2": toy(3.0, 1)}
    config = aggregator_config(
        "mem://",
        tmp_path,
        agents=2,
        fit_config={"epochs": 2},
        strategy=StrategyConfig(name=StrategyName.FEDPROX, proximal_mu=0.25),
    )
    await federate_in_memory(plugins, config, lambda a: trainer_config(a, "mem://", tmp_path))
    for p in plugins.values():
        fits = p.plugin.fits  # type: ignore[attr-defined]
        assert fits
        assert all(f["proximal_mu"] == 0.25 and f["epochs"] == 2 for f in fits)


async def fedadam_model(tmp_path: Path, secure: SecureAggregation) -> list[np.ndarray]:
    """Three rounds of FedAdam over four toy agents (values 1..4, examples 1..4); the final
    global model on disk."""
    plugins = {f"a{i}": toy(float(i), i) for i in range(1, 5)}
    config = aggregator_config(
        "mem://",
        tmp_path,
        agents=4,
        rounds=3,
        round_timeout=5.0,
        strategy=StrategyConfig(name=StrategyName.FEDADAM, server_lr=0.5, tau=0.1),
    )
    schedule = msgspec.structs.replace(
        config.aggregator,
        min_fit_clients=3,
        secure_aggregation=secure,
        secagg=SecAggConfig(stage_timeout=2.0),
    )
    config = msgspec.structs.replace(config, aggregator=schedule)
    summary, _ = await federate_in_memory(
        plugins, config, lambda a: trainer_config(a, "mem://", tmp_path)
    )
    assert [len(r.survivors) for r in summary.rounds] == [4, 4, 4]
    state_dir = tmp_path / "aggregator"
    assert {"m_0", "m_1", "v_0", "v_1"} <= set(
        RunStore(state_dir / "runs" / "run-0001").load_strategy(3)
    )
    return read_weights(state_dir / "global_model.npz")


async def test_fedadam_is_the_same_with_secagg_on_and_off(tmp_path: Path) -> None:
    """The strategy sees one AggregatedUpdate on both paths, so FedAdam's model after three
    rounds with SecAgg+ equals the plain one to quantization precision (and moved off 0)."""
    plain = await fedadam_model(tmp_path / "plain", SecureAggregation.NONE)
    secure = await fedadam_model(tmp_path / "secure", SecureAggregation.SECAGG_PLUS)
    assert float(plain[0].mean()) > 0.5
    for a, b in zip(plain, secure, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-4)
