"""Whole federations on the in-memory bus: rounds, FedAvg, evaluation, dropouts, finish."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from agent.plugin.loader import CheckedPlugin
from agent.state import read_weights
from tests.helpers import (
    ToyPlugin,
    federate,
    toy,
)

pytestmark = pytest.mark.timeout(60)


async def test_rounds_average_by_num_examples(tmp_path: Path) -> None:
    """Three agents with values 1, 2, 4 and 1, 1, 2 examples: each round's global model is
    (1 + 2 + 8) / 4 = 2.75 everywhere; every round is evaluated and persisted."""
    summary, trainers = await federate(
        tmp_path, {"a1": toy(1.0, 1), "a2": toy(2.0, 1), "a3": toy(4.0, 2)}, rounds=2
    )
    assert [r.survivors for r in summary.rounds] == [["a1", "a2", "a3"]] * 2
    assert [r.num_examples for r in summary.rounds] == [4, 4]
    assert summary.rounds[-1].loss == pytest.approx(2.75)
    assert summary.rounds[-1].accuracy == pytest.approx(0.275)
    assert summary.rounds[0].train_loss == pytest.approx(2.75)
    model = read_weights(
        tmp_path / "aggregator" / "runs" / "run-0001" / "rounds" / "0002" / "model.npz"
    )
    np.testing.assert_allclose(model[0], 2.75)
    stored = json.loads((tmp_path / "aggregator" / "metrics.json").read_text())
    assert [r["round"] for r in stored] == [1, 2]
    for t in trainers.values():
        assert t.status == "finished"
        assert t.model is not None
        assert t.model.version == 2
    assert read_weights(tmp_path / "a1" / "global_model.npz")[1].tolist() == [2.75, 2.75]


async def test_a_silent_agent_is_a_dropout_and_the_round_ends_at_its_deadline(
    tmp_path: Path,
) -> None:
    """An agent that never answers is recorded as a dropout; the round closes at its deadline
    and aggregates the survivors only."""
    release = threading.Event()
    try:
        summary, _ = await federate(
            tmp_path,
            {"a1": toy(1.0, 1), "a2": toy(3.0, 1), "slow": toy(100.0, 1, block=release)},
            rounds=1,
            round_timeout=1.0,
        )
    finally:
        release.set()
    record = summary.rounds[0]
    assert record.survivors == ["a1", "a2"]
    assert record.dropouts == ["slow"]
    assert record.loss == pytest.approx(2.0)


async def test_fit_config_reaches_the_plugin(tmp_path: Path) -> None:
    """The aggregator's fit_config and the round number reach Plugin.fit."""
    plugin = ToyPlugin(1.0, 1)
    await federate(
        tmp_path,
        {"a1": CheckedPlugin("toy", plugin), "a2": toy(1.0, 1)},
        rounds=2,
        fit_config={"epochs": 3, "lr": 0.5},
    )
    assert plugin.fits == [
        {"epochs": 3, "lr": 0.5, "round": 1},
        {"epochs": 3, "lr": 0.5, "round": 2},
    ]


async def test_the_aggregator_unbinds_its_log_context_when_it_ends(tmp_path: Path) -> None:
    """run() binds federation and role for its log lines only while it runs: the caller's
    structlog context is as it was afterwards."""
    import structlog

    structlog.contextvars.clear_contextvars()
    await federate(tmp_path, {"a1": toy(1.0, 1)}, rounds=1)
    assert structlog.contextvars.get_contextvars() == {}
