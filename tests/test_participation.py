"""FedAU's participation weights for buffered async (``agent.roles.aggregator.participation``):
the online interval estimate on the buffer's clock, its cutoff, the self-normalised buffer
mean they weight, and the settings that choose them."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from agent.async_settings import AsyncConfig, Participation
from agent.demo.async_mode import mode_fields
from agent.demo.options import DemoOptions
from agent.roles.aggregator.buffer import Buffer, Entry
from agent.roles.aggregator.participation import ParticipationWeights, weights_for

pytestmark = pytest.mark.timeout(10)


def test_an_agent_weighs_its_mean_interval_in_versions() -> None:
    """K = 2: each accepted update is half a version on the clock. "fast" contributes four
    times in a row (intervals 0.5), "slow", sent its fit at the start, after them (2.5)."""
    weights = ParticipationWeights(Participation.INTERVAL, buffer_size=2, cap=20.0)
    weights.sent(["fast", "slow"])
    assert [weights.weigh("fast") for _ in range(4)] == [0.5] * 4
    assert weights.weigh("slow") == 2.5
    assert weights.weigh("fast") == pytest.approx(0.6)  # intervals 0.5 x 4 and 1.0


def test_the_first_interval_starts_at_the_first_fit_and_each_is_cut_off() -> None:
    weights = ParticipationWeights(Participation.INTERVAL, buffer_size=1, cap=3.0)
    weights.sent(["a"])
    for _ in range(5):
        weights.weigh("a")
    weights.sent(["late", "a"])  # a second fit does not restart a's interval
    assert weights.weigh("late") == 1.0  # not 6: it joined at version 5
    assert weights.weigh("a") == pytest.approx((5 * 1.0 + 2.0) / 6)
    for _ in range(10):
        weights.weigh("a")
    assert weights.weigh("late") == pytest.approx((1.0 + 3.0) / 2)  # 11 versions cut to 3


def test_none_and_secagg_weigh_every_update_alike() -> None:
    weights = ParticipationWeights(Participation.NONE, buffer_size=2, cap=20.0)
    weights.sent(["a", "b"])
    assert [weights.weigh("a"), weights.weigh("a"), weights.weigh("b")] == [1.0] * 3
    fedau = AsyncConfig(participation=Participation.INTERVAL)
    assert weights_for(fedau, secure=True).rule is Participation.NONE
    assert weights_for(fedau, secure=False).rule is Participation.INTERVAL
    assert weights_for(AsyncConfig(), secure=False).rule is Participation.NONE


def test_the_buffer_mean_is_self_normalised() -> None:
    """Δ = Σ n·s·ω·Δ_k / Σ n·ω: the weights move the agents' shares, not the step's size."""
    like = [np.zeros(2, np.float32)]
    buffer = Buffer(2, like)
    buffer.add(Entry("a", 0, 0, 1.0, 2, {}, 3.0), [np.full(2, 1.0, np.float32)], like)
    buffer.add(Entry("b", 0, 1, 0.5, 1, {}, 1.0), [np.full(2, 4.0, np.float32)], like)
    result = buffer.result()
    expected = (2 * 1.0 * 3.0 * 1.0 + 1 * 0.5 * 1.0 * 4.0) / (2 * 3.0 + 1 * 1.0)
    np.testing.assert_allclose(result.delta[0], expected)
    assert result.total_weight == 3  # the record's num_examples: Σ n
    assert buffer.staleness_metrics()["participation_weight_mean"] == 2.0


def test_the_setting_parses_and_the_demo_passes_it() -> None:
    assert AsyncConfig().participation is Participation.NONE  # FedBuff as published
    parsed = msgspec.convert({"participation": "interval", "participation_cap": 5.0}, AsyncConfig)
    assert (parsed.participation, parsed.participation_cap) == (Participation.INTERVAL, 5.0)
    with pytest.raises(msgspec.ValidationError, match="participation"):
        msgspec.convert({"participation": "often"}, AsyncConfig)
    options = DemoOptions(
        mode="async", agents=4, secure_aggregation="none", participation="interval"
    )
    assert mode_fields(options)["async_"].participation is Participation.INTERVAL
