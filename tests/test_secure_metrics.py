"""Secure metrics: under SecAgg+ the cohort's fit metrics travel only inside the masked vector,
so the aggregator records their weighted means (no NaN train_loss) and never one agent's."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from agent.config import AgentConfig, SecAggConfig, SecureAggregation
from agent.messages.bodies import MaskedInput, ModelUpdate
from agent.messages.envelope import Message
from agent.privacy import secure_metrics
from agent.roles.aggregator.fit import CohortFit
from agent.roles.aggregator.records import RoundRecord
from agent.roles.aggregator.secure_round import SecureRound
from agent.secagg.quantize import dequantize_sum
from agent.strategy.update import ClientResult, mean_update
from tests.helpers import aggregator_config, federate_in_memory, toy, trainer_config

pytestmark = pytest.mark.timeout(60)


def test_metric_words_give_the_weighted_mean_of_the_reporters() -> None:
    """Σ w·words decodes to the weighted mean over the agents that reported each metric;
    one that did not report a metric does not pull its mean towards low."""
    slots = secure_metrics.slots({"train_loss": (0.0, 10.0), "train_accuracy": (0.0, 1.0)})
    agents = [({"train_loss": 2.0, "train_accuracy": 0.5}, 3), ({"train_loss": 6.0}, 1)]
    total = sum(w * secure_metrics.encode(m, slots, scale=8.0) for m, w in agents)
    means = secure_metrics.decode(total, slots, scale=8.0)
    assert means["train_loss"] == pytest.approx((3 * 2 + 6) / 4)
    assert means["train_accuracy"] == pytest.approx(0.5)
    # out of range is clipped to it, NaN / strings / bools count as not reported
    words = secure_metrics.encode(
        {"train_loss": 99.0, "train_accuracy": math.nan}, slots, scale=8.0
    )
    assert secure_metrics.decode(words, slots, scale=8.0) == {"train_loss": 10.0}


def test_plain_rounds_average_every_metric_and_records_have_no_nan() -> None:
    """The plain path averages every numeric metric by num_examples; a record's unknown
    numbers are null in JSON, never a bare NaN."""
    w = [np.zeros(2, np.float32)]
    results = [
        ClientResult("a", w, 1, {"train_loss": 1.0, "f1": 0.2, "tag": "x"}),
        ClientResult("b", w, 3, {"train_loss": 3.0, "f1": math.nan}),
    ]
    update = mean_update(w, results)
    assert update.metrics == {"train_loss": pytest.approx(2.5), "f1": pytest.approx(0.2)}
    record = RoundRecord(1, [], [], [], 0, math.nan, None, math.nan, 0, 0.0, 0, "0" * 64)
    text = json.dumps(record.to_dict(), allow_nan=False)
    assert json.loads(text)["train_loss"] is None


def secure_config(tmp_path: Path, agents: int) -> AgentConfig:
    config = aggregator_config("mem://", tmp_path, agents=agents, round_timeout=5.0, rounds=1)
    schedule = msgspec.structs.replace(
        config.aggregator,
        min_fit_clients=3,
        secure_aggregation=SecureAggregation.SECAGG_PLUS,
        secagg=SecAggConfig(stage_timeout=2.0),
    )
    return msgspec.structs.replace(config, aggregator=schedule)


async def test_aggregator_never_holds_one_agents_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five agents report distinct train_loss values under SecAgg+: the round records their
    weighted mean (not NaN); no message the aggregator accepts carries a metric, and the
    server state after the first masked input decodes to noise, not that agent's metrics."""
    values = {f"a{i}": 1.0 + i / 7 for i in range(1, 6)}  # 1.142857..., distinct digits
    plugins = {a: toy(v, i + 1) for i, (a, v) in enumerate(values.items())}
    bodies: list[Any] = []
    first_sums: list[np.ndarray] = []
    on_secagg, on_update = CohortFit.on_secagg, CohortFit.on_update
    on_masked = SecureRound.on_masked_input

    async def spy_secagg(self: CohortFit, message: Message[Any]) -> None:
        bodies.append(message.body)
        await on_secagg(self, message)

    async def spy_update(self: CohortFit, message: Message[ModelUpdate]) -> None:
        bodies.append(message.body)
        await on_update(self, message)

    def spy_masked(self: SecureRound, sender: str, body: MaskedInput) -> None:
        on_masked(self, sender, body)
        if not first_sums and self.state.masked_sum is not None:
            first_sums.append(self.state.masked_sum.copy())

    monkeypatch.setattr(CohortFit, "on_secagg", spy_secagg)
    monkeypatch.setattr(CohortFit, "on_update", spy_update)
    monkeypatch.setattr(SecureRound, "on_masked_input", spy_masked)
    config = secure_config(tmp_path, len(plugins))
    summary, _ = await federate_in_memory(
        plugins, config, lambda a: trainer_config(a, "mem://", tmp_path)
    )
    (record,) = summary.rounds
    weights = {a: i + 1 for i, a in enumerate(values)}
    expected = sum(values[a] * weights[a] for a in values) / sum(weights.values())
    assert record.train_loss == pytest.approx(expected, abs=1e-3)
    assert record.metrics["train_loss"] == pytest.approx(expected, abs=1e-3)
    assert record.eval_metrics["accuracy"] == pytest.approx(min(1.0, expected / 10), abs=1e-3)
    assert bodies
    assert not any(isinstance(b, ModelUpdate) for b in bodies)
    seen = b"".join(msgspec.json.encode(b) for b in bodies)
    for value in values.values():
        assert repr(value)[:8].encode() not in seen
    # What the server held after one input is masked: read as a plain quantized sum, its
    # train_loss words are not that agent's.
    (held,) = first_sums
    params = config.aggregator.secagg.params(len(plugins))
    words = dequantize_sum(held[:-1], survivors=1, params=params)[-6:] * params.max_weight
    slots = secure_metrics.slots(config.aggregator.secagg.metrics)
    decoded = secure_metrics.decode(words, slots, scale=params.clipping_range)
    assert all(abs(decoded.get("train_loss", -1.0) - v) > 1e-3 for v in values.values())
