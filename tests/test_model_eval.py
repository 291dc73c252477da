"""``agent.demo.model_eval``: a model scored over every agent's test slice is the score on the
whole test set (digits' slices split it), and every committed version of a run is scored."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.demo.model_eval import SliceEvaluator, versions_accuracy
from agent.demo.options import DemoOptions
from agent.state import write_weights

pytestmark = pytest.mark.timeout(60)


def test_every_slice_together_is_the_whole_test_set(tmp_path: Path) -> None:
    from fedbus_digits.plugin import centralized

    whole = centralized()
    weights = whole.fit(whole.get_weights(), {"epochs": 1}).weights
    expected = whole.evaluate(weights, {}).metrics["accuracy"]
    slices = SliceEvaluator.of_demo(DemoOptions(agents=3, report_dir=tmp_path))
    assert slices.accuracy(weights) == pytest.approx(expected)


def test_each_committed_version_is_scored(tmp_path: Path) -> None:
    from fedbus_digits.plugin import centralized

    plugin = centralized()
    initial = plugin.get_weights()
    trained = plugin.fit(initial, {"epochs": 2}).weights
    state = tmp_path / "aggregator"
    for r, weights in ((0, initial), (1, trained)):
        where = state / "runs" / "run-0001" / "rounds" / f"{r:04d}"
        where.mkdir(parents=True)
        write_weights(where / "model.npz", weights)
    slices = SliceEvaluator.of_demo(DemoOptions(agents=2, report_dir=tmp_path))
    scores = versions_accuracy(state, slices)
    assert set(scores) == {0, 1}
    assert scores[1] == pytest.approx(slices.accuracy(trained))
    assert scores[1] > scores[0]
    assert versions_accuracy(tmp_path / "none", slices) == {}
