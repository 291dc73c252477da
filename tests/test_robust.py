"""Bounded influence of one device (agent.robust): the bounds on a plain update, the robust
rules, what the unmasked SecAgg+ sum may be, the model guard, and the evaluation checks."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import msgspec
import numpy as np
import pytest
from structlog.testing import capture_logs

from agent.bus.base import BusSettings
from agent.bus.memory import MemoryBroker, MemoryBus
from agent.config import AgentConfig, AggregatorConfig, SecureAggregation
from agent.errors import ConfigError, ModelRejectedError, RefusedError, SecAggAbortError
from agent.plugin.api import EvaluateResult, Scalar, Weights
from agent.plugin.loader import CheckedPlugin
from agent.robust.aggregate import multi_krum, robust_mean, trimmed_mean
from agent.robust.bounds import admit, clip_norm, l2_norm, relative_bound
from agent.robust.evaluation import check_result
from agent.robust.guard import check_model
from agent.robust.secure import check_mean, check_ring_sum
from agent.robust.settings import Aggregation, OnViolation, RobustConfig
from agent.roles.aggregator.fit import CohortFit
from agent.roles.aggregator.outcome import RoundFailure
from agent.roles.aggregator.records import GlobalState
from agent.roles.aggregator.robust_fit import robust_update
from agent.runtime.metrics import Metrics
from agent.runtime.outbox import Outbox
from agent.secagg.params import resolve
from agent.secagg.simulation import Observer, SecAggRound, announce
from agent.secagg.state import Stage
from agent.strategy.fedavg import FedAvgM
from agent.strategy.update import AggregatedUpdate, ClientResult
from tests.helpers import (
    ToyPlugin,
    aggregator_config,
    federate,
    federate_in_memory,
    toy,
    trainer_config,
)

pytestmark = pytest.mark.timeout(30)

BASE = [np.zeros((3, 2), np.float32), np.zeros(2, np.float32)]


def filled(value: float) -> list[np.ndarray]:
    return [np.full_like(a, value) for a in BASE]


def test_an_update_that_is_not_finite_is_refused() -> None:
    """1e308 is finite, but its delta against -1e308 overflows float64; NaN is refused."""
    base = [np.full(2, -1e308)]
    with pytest.raises(RefusedError) as caught:
        admit(
            base=base,
            trained=[np.full(2, 1e308)],
            num_examples=1,
            declared=0,
            settings=RobustConfig(),
        )
    assert caught.value.reason == "not_finite"
    with pytest.raises(RefusedError, match="NaN"):
        admit(
            base=BASE,
            trained=filled(np.nan),
            num_examples=1,
            declared=0,
            settings=RobustConfig(),
        )


def test_the_weight_is_capped_and_cannot_exceed_what_was_declared() -> None:
    """num_examples = 2^53 against 100 declared is refused; without a declaration it is
    capped at max_weight."""
    with pytest.raises(RefusedError) as caught:
        admit(
            base=BASE, trained=filled(1), num_examples=2**53, declared=100, settings=RobustConfig()
        )
    assert caught.value.reason == "weight_above_declared"
    ok = admit(
        base=BASE, trained=filled(1), num_examples=2**53, declared=0, settings=RobustConfig()
    )
    assert ok.weight == 1000


def test_the_norm_bound_clips_or_rejects() -> None:
    """An update of norm 8·sqrt(8) above C = 2 is scaled to norm 2 (clip) or refused."""
    clip = RobustConfig(max_update_norm=2.0, on_norm=OnViolation.CLIP)
    kept = admit(base=BASE, trained=filled(8), num_examples=5, declared=5, settings=clip)
    assert kept.clipped
    assert l2_norm(kept.delta) == pytest.approx(2.0)
    reject = RobustConfig(max_update_norm=2.0, on_norm=OnViolation.REJECT)
    with pytest.raises(RefusedError) as caught:
        admit(base=BASE, trained=filled(8), num_examples=5, declared=5, settings=reject)
    assert caught.value.reason == "norm_above_bound"
    assert np.linalg.norm(clip_norm(np.full(4, 3.0), 1.0)) == pytest.approx(1.0)


def test_the_relative_bound_drops_an_outlier_among_honest_updates() -> None:
    """Three honest updates (1, 2, 3) and one of 1e6: the outlier is above 10x the median
    norm and is dropped; the mean is the honest one."""
    results = [ClientResult(f"a{i}", filled(v), 10, {}) for i, v in enumerate([1, 2, 3, 1e6])]
    with capture_logs() as logs:
        update = robust_update(BASE, results, RobustConfig())
    assert update is not None
    assert update.survivors == ("a0", "a1", "a2")
    assert update.delta[0] == pytest.approx(np.full((3, 2), 2.0))
    assert any(e.get("reason") == "norm_above_bound" and e["agent"] == "a3" for e in logs)
    assert relative_bound([1.0, 2.0], 10) is None  # too few to trust a median


@pytest.mark.parametrize(
    "rule", [Aggregation.MEDIAN, Aggregation.TRIMMED_MEAN, Aggregation.MULTI_KRUM]
)
def test_robust_rules_ignore_one_attacker(rule: Aggregation) -> None:
    """Five honest deltas near 1 and one at 1000: each robust rule stays near 1."""
    values = [0.9, 1.0, 1.1, 1.0, 0.95, 1000.0]
    deltas = [[np.full(4, v)] for v in values]
    settings = RobustConfig(aggregation=rule, trim_fraction=0.2, byzantine=1)
    (out,) = robust_mean(deltas, [1] * len(values), settings)
    assert np.all(np.abs(out - 1.0) < 0.1)


def test_trimmed_mean_and_krum_by_hand() -> None:
    """β = 0.25 of 4 values cuts one at each end; Krum picks the tight cluster."""
    stacked = np.array([[0.0], [1.0], [2.0], [100.0]])
    assert trimmed_mean(stacked, 0.25) == pytest.approx([1.5])
    assert multi_krum(stacked, f=1, m=2) == [0, 1] or multi_krum(stacked, f=1, m=2) == [1, 2]


def test_a_ring_sum_shifted_after_masking_aborts() -> None:
    """A client that adds 2^31 to every word after masking: the unmasked sum is out of range
    and the server aborts with out_of_range (the honest round unmasks)."""
    setup = announce(5, 16, params=resolve(5))
    updates = {a: np.full(16, 0.1) for a in setup.cohort}
    weights = dict.fromkeys(setup.cohort, 10)
    honest = SecAggRound(setup, updates, weights).play()
    assert honest.mean == pytest.approx(np.full(16, 0.1), abs=1e-3)

    class Shift(Observer):
        def sent(self, sender: str, stage: Stage, message: object) -> None:
            if stage is Stage.COLLECT_MASKED_INPUT and sender == setup.cohort[0]:
                assert isinstance(message, np.ndarray)
                message += np.array(2**31, dtype=message.dtype)

    with pytest.raises(SecAggAbortError) as caught:
        SecAggRound(announce(5, 16, params=resolve(5)), updates, weights, observer=Shift()).play()
    assert caught.value.reason == "out_of_range"


def test_ring_and_mean_checks_by_hand() -> None:
    """Each of the four checks refuses what honest inputs cannot produce."""
    ok = np.array([10, 20, 3], np.uint32)
    check_ring_sum(ok, survivors=3, bits=4, max_weight=5)
    for total in ([46, 0, 3], [1, 1, 2], [1, 1, 16]):
        with pytest.raises(SecAggAbortError, match="out_of_range"):
            check_ring_sum(np.array(total, np.uint32), survivors=3, bits=4, max_weight=5)
    s = np.array([8.0, -8.0])
    check_mean(s, total_weight=1, survivors=1, clipping_range=8.0, step=0.0, max_weight=1)
    with pytest.raises(SecAggAbortError, match="coordinate"):
        check_mean(s * 2, total_weight=1, survivors=1, clipping_range=8.0, step=0.0, max_weight=1)
    with pytest.raises(SecAggAbortError, match="L2 norm"):
        check_mean(
            s, total_weight=1, survivors=1, clipping_range=8.0, step=0.0, max_weight=1, norm_bound=1
        )


def test_the_guard_refuses_a_non_finite_or_far_model() -> None:
    """A NaN model, or one moved more than 100x the model's norm, is not published."""
    old = [np.ones(4, np.float32)]
    assert check_model(old, [np.full(4, 2, np.float32)], RobustConfig()) == pytest.approx(2.0)
    with pytest.raises(ModelRejectedError) as caught:
        check_model(old, [np.full(4, np.inf, np.float32)], RobustConfig())
    assert caught.value.reason == "not_finite"
    with pytest.raises(ModelRejectedError) as caught:
        check_model(old, [np.full(4, 1e4, np.float32)], RobustConfig())
    assert caught.value.reason == "change_above_bound"


@pytest.mark.parametrize(
    ("loss", "examples", "accuracy", "reason"),
    [
        (float("nan"), 10, 0.5, "not_finite"),
        (0.1, 10, 1.5, "accuracy_out_of_range"),
        (0.1, 10, float("nan"), "accuracy_out_of_range"),
        (0.1, 10, "high", "accuracy_out_of_range"),
        (0.1, 2**53, 1.0, "examples_above_declared"),
    ],
)
def test_evaluation_results_out_of_range_are_refused(
    loss: float, examples: int, accuracy: object, reason: str
) -> None:
    with pytest.raises(RefusedError) as caught:
        check_result(
            loss=loss,
            num_examples=examples,
            metrics={"accuracy": accuracy},  # type: ignore[dict-item]
            declared=100,
            max_weight=1000,
        )
    assert caught.value.reason == reason
    assert check_result(loss=0.1, num_examples=50, metrics={}, declared=100, max_weight=10) == 10


class _OutOfRange(ToyPlugin):
    """Trains like the toy plugin; its evaluation says accuracy 1.5."""

    def evaluate(self, weights: Weights, config: Mapping[str, Scalar]) -> EvaluateResult:
        return EvaluateResult(0.1, self.n, {"accuracy": 1.5})


async def test_an_out_of_range_evaluation_is_an_answer_not_a_missed_deadline(
    tmp_path: Path,
) -> None:
    """An evaluator whose result is refused has still answered: the evaluation does not wait
    out ``eval_timeout`` for it, and it is not taken for late, so the next round samples it
    (before, it was skipped as offline and round 2 ran without it)."""
    plugins = {"a1": toy(1.0, 10), "a2": CheckedPlugin("toy", _OutOfRange(2.0, 10))}
    with capture_logs() as logs:
        summary, _ = await federate(tmp_path, plugins, rounds=2, round_timeout=20.0)
    assert [r.cohort for r in summary.rounds] == [["a1", "a2"], ["a1", "a2"]]
    refused = [e for e in logs if e["event"] == "metrics_rejected"]
    assert {e["agent"] for e in refused} == {"a2"}
    assert {e["reason"] for e in refused} == {"accuracy_out_of_range"}
    events = {e["event"] for e in logs}
    assert "evaluation_incomplete" not in events
    assert "offline_agents_skipped" not in events
    assert [r.eval_examples for r in summary.rounds] == [10, 10]  # a1's alone


async def test_a_huge_update_in_a_federation_is_refused(tmp_path: Path) -> None:
    """Three honest toy agents (1, 2, 3) and one sending 1e30: every round's model is the
    honest mean, the attacker's update is refused with its reason each round."""
    plugins = {"a": toy(1, 10), "b": toy(2, 10), "c": toy(3, 10), "m": toy(1e30, 10)}
    with capture_logs() as logs:
        summary, _ = await federate(tmp_path, plugins, rounds=2)
    assert [r.survivors for r in summary.rounds] == [["a", "b", "c"]] * 2
    refused = [e for e in logs if e["event"] == "update_rejected" and e["agent"] == "m"]
    assert [e["reason"] for e in refused] == ["norm_above_bound"] * 2


async def test_a_model_failing_the_guard_is_not_published_and_the_state_rolls_back(
    tmp_path: Path,
) -> None:
    """FedAvgM stepping along a NaN delta: the round fails as model_rejected, nothing is
    returned to publish, and the momentum is what it was before the step."""
    fit = CohortFit(
        outbox=Outbox(
            MemoryBus(MemoryBroker(), BusSettings(client_id="x")),
            federation="fed",
            sender="aggregator",
        ),
        schedule=AggregatorConfig(min_fit_clients=1, min_available_clients=1),
        federation="fed",
        strategy=FedAvgM(server_lr=1.0, momentum=0.5),
        alive=lambda _: True,
        metrics=Metrics(),
    )
    before = GlobalState.of(0, BASE)
    small = AggregatedUpdate([np.full_like(a, 0.5, dtype=np.float64) for a in BASE], 1, ("a",))
    assert (await fit._step(before, small, 1)).weights is not None
    kept = fit.strategy.state()
    huge = AggregatedUpdate([np.full_like(a, np.nan, dtype=np.float64) for a in BASE], 1, ("a",))
    with capture_logs() as logs:
        outcome = await fit._step(before, huge, 1)
    assert outcome.weights is None
    assert outcome.failure is RoundFailure.MODEL_REJECTED
    assert [e["reason"] for e in logs if e["event"] == "model_rejected"] == ["not_finite"]
    assert all(np.array_equal(kept[k], v) for k, v in fit.strategy.state().items())


async def test_a_robust_rule_runs_in_a_federation(tmp_path: Path) -> None:
    """aggregation = median, no norm bound: three honest toy agents (1, 2, 3) and one at 100;
    the coordinate-wise median of the deltas is 2.5, not the mean 26.5."""
    plugins = {"a": toy(1, 10), "b": toy(2, 10), "c": toy(3, 10), "m": toy(100, 10)}
    robust = RobustConfig(aggregation=Aggregation.MEDIAN, norm_factor=0)
    summary, _ = await federate(tmp_path, plugins, rounds=1, robust=robust)
    assert summary.rounds[0].survivors == ["a", "b", "c", "m"]
    assert summary.rounds[0].loss == pytest.approx(2.5)


def test_the_robust_table_parses_and_refuses_unknown_keys() -> None:
    text = """
role = "aggregator"
agent_id = "aggregator"
federation = "fed"
bus_url = "mem://"
state_dir = "/tmp/x"
[plugin]
name = "toy"
[aggregator.robust]
aggregation = "multi_krum"
byzantine = 2
on_norm = "clip"
max_update_norm = 5.0
"""
    robust = AgentConfig.parse(text).aggregator.robust
    assert robust.aggregation is Aggregation.MULTI_KRUM
    assert robust.on_norm is OnViolation.CLIP
    with pytest.raises(ConfigError, match="nrom"):
        AgentConfig.parse(text + "nrom = 1\n")


async def test_secagg_with_a_norm_bound_and_secure_metrics_completes(tmp_path: Path) -> None:
    """SecAgg+ with max_update_norm = 1 (the toy deltas are 2.8-8.5): the trainers clip to it,
    the unmasked mean passes every check (the secure-metric words are checked apart from
    the model), and every round completes with all three survivors."""
    plugins = {"a": toy(1, 10), "b": toy(2, 10), "c": toy(3, 10)}
    with capture_logs() as logs:
        config = aggregator_config("mem://", tmp_path, agents=3)
        schedule = msgspec.structs.replace(
            config.aggregator,
            min_fit_clients=3,
            secure_aggregation=SecureAggregation.SECAGG_PLUS,
            robust=RobustConfig(max_update_norm=1.0),
        )
        summary, _ = await federate_in_memory(
            plugins,
            msgspec.structs.replace(config, aggregator=schedule),
            lambda agent_id: trainer_config(agent_id, "mem://", tmp_path),
        )
    assert not [e for e in logs if e["event"] == "secagg_aborted"]
    assert [len(r.survivors) for r in summary.rounds] == [3, 3]
