"""`fedbus plugin check`: the conformance suite passes good plugins and names what bad ones
break (mutated input, wrong shapes, NaN weights, exceptions), with a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from agent.plugin.api import EvaluateResult, FitResult, PluginContext, PluginInfo, Scalar, Weights
from agent.plugin.check import check_factory, check_plugin
from agent.plugin.check_report import CheckReport, Status

pytestmark = pytest.mark.timeout(60)


class Good:
    """A minimal conforming plugin: fit adds 1 to copies of the weights."""

    def __init__(self, context: PluginContext) -> None:
        self.context = context

    def get_weights(self) -> Weights:
        return [np.zeros((3, 2), np.float32), np.zeros(2, np.float32)]

    def fit(self, weights: Weights, config: Mapping[str, Scalar]) -> FitResult:
        return FitResult([w + 1 for w in weights], 5, {"train_loss": 0.5})

    def evaluate(self, weights: Weights, config: Mapping[str, Scalar]) -> EvaluateResult:
        return EvaluateResult(float(np.sum(weights[0])), 5, {"accuracy": 0.5})


class Mutates(Good):
    def fit(self, weights: Weights, config: Mapping[str, Scalar]) -> FitResult:
        weights[0] += 1  # in place: the caller's arrays change
        return FitResult(list(weights), 5, {})


class WrongShapes(Good):
    def fit(self, weights: Weights, config: Mapping[str, Scalar]) -> FitResult:
        return FitResult([np.zeros((2, 3), np.float32), weights[1].copy()], 5, {})


class NanWeights(Good):
    def fit(self, weights: Weights, config: Mapping[str, Scalar]) -> FitResult:
        return FitResult([np.full_like(w, np.nan) for w in weights], 5, {})


class NanInitial(Good):
    def get_weights(self) -> Weights:
        return [np.array([1.0, np.nan], np.float32)]


class Raises(Good):
    def evaluate(self, weights: Weights, config: Mapping[str, Scalar]) -> EvaluateResult:
        return self._broken_metric(weights)

    def _broken_metric(self, weights: Weights) -> EvaluateResult:
        raise ZeroDivisionError("no test examples, divided by zero")


class Flaky(Good):
    def __init__(self, context: PluginContext) -> None:
        super().__init__(context)
        self.calls = 0

    def evaluate(self, weights: Weights, config: Mapping[str, Scalar]) -> EvaluateResult:
        self.calls += 1
        return EvaluateResult(float(self.calls), 5, {})


def status(report: CheckReport, title: str) -> Status:
    return next(r.status for r in report.results if r.title == title)


def test_a_conforming_plugin_passes_every_check_with_timings() -> None:
    """A correct plugin passes; the report names each check with the seconds it took."""
    report = check_factory(Good, name="good")
    assert report.passed, report.render()
    titles = [r.title for r in report.results]
    assert {
        "get_weights",
        "weights round trip",
        "fit",
        "fit does not mutate its input",
        "fit result round trip",
        "evaluate",
        "evaluate is deterministic",
    } <= set(titles)
    assert all(r.seconds >= 0 for r in report.results)
    assert "conforms: " in report.render()


def test_mutating_the_input_is_caught() -> None:
    """fit that changes its input arrays in place fails 'fit does not mutate its input'."""
    report = check_factory(Mutates, name="mutates")
    assert not report.passed
    assert status(report, "fit does not mutate its input") is Status.FAILED
    assert "modified its input weights in place" in report.render()
    assert status(report, "fit accepts read-only weights") is Status.FAILED  # wire arrays


def test_wrong_shapes_are_caught() -> None:
    """fit returning arrays of other shapes fails 'fit', naming got and expected shapes;
    the checks that need a fit result are reported as not run."""
    report = check_factory(WrongShapes, name="shapes")
    assert status(report, "fit") is Status.FAILED
    text = report.render()
    assert "float32 (2, 3)" in text
    assert "float32 (3, 2)" in text
    assert status(report, "fit does not mutate its input") is Status.SKIPPED
    assert "DOES NOT CONFORM" in text


def test_nan_weights_are_caught() -> None:
    """NaN in fit's result, or in the initial weights, fails the check that produced it."""
    report = check_factory(NanWeights, name="nan")
    assert status(report, "fit") is Status.FAILED
    assert "NaN" in report.render()
    initial = check_factory(NanInitial, name="nan-initial")
    assert status(initial, "get_weights") is Status.FAILED


def test_a_raising_plugin_is_reported_with_its_traceback() -> None:
    """An exception inside the plugin fails the check, and the report shows the traceback
    down to the plugin's own frame."""
    report = check_factory(Raises, name="raises")
    failed = next(r for r in report.results if r.title == "evaluate")
    assert failed.status is Status.FAILED
    assert failed.traceback is not None
    assert "ZeroDivisionError: no test examples" in failed.traceback
    assert "_broken_metric" in failed.traceback
    assert "_broken_metric" in report.render()


def test_a_nondeterministic_evaluate_is_caught() -> None:
    """evaluate giving different results for the same weights fails determinism."""
    report = check_factory(Flaky, name="flaky")
    assert status(report, "evaluate") is Status.PASSED
    assert status(report, "evaluate is deterministic") is Status.FAILED


def test_a_factory_that_raises_stops_the_suite() -> None:
    """A factory that raises fails 'create'; every check needing the plugin is not run."""

    def factory(context: PluginContext) -> Good:
        raise ValueError("bad option")

    report = check_factory(factory, name="broken")
    assert status(report, "create") is Status.FAILED
    assert status(report, "fit") is Status.SKIPPED
    assert not report.passed


def test_describe_hook_supplies_partition_options_and_fit_defaults() -> None:
    """A plugin whose describe() lists agent_index/num_agents is built as agent 0 of 1, and
    its fit defaults reach fit."""
    seen: dict[str, object] = {}

    class Described(Good):
        def fit(self, weights: Weights, config: Mapping[str, Scalar]) -> FitResult:
            seen.update(options=dict(self.context.options), config=dict(config))
            return super().fit(weights, config)

        @staticmethod
        def describe() -> PluginInfo:
            return PluginInfo(
                options={"agent_index": None, "num_agents": None}, fit_config={"epochs": 2}
            )

    assert check_factory(Described, name="described").passed
    assert seen["options"] == {"agent_index": 0, "num_agents": 1}
    assert seen["config"] == {"epochs": 2, "round": 1}


@pytest.mark.parametrize("name", ["digits-mlp", "cancer-logreg"])
def test_first_party_plugins_conform(name: str) -> None:
    """The installed first-party model plugins pass the suite, ONNX export included."""
    report = check_plugin(name)
    assert report.passed, report.render()
    assert status(report, "export") is Status.PASSED


def test_cli_check_exits_nonzero_for_a_broken_project(tmp_path: Path) -> None:
    """`fedbus plugin check PATH` on an uninstalled project with a mutating plugin prints the
    report and exits 1; on an installed good plugin it exits 0."""
    project = tmp_path / "broken"
    (project / "broken_plugin").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        textwrap.dedent("""
        [project]
        name = "broken"
        version = "0"
        [project.entry-points."fedbus.plugins"]
        broken = "broken_plugin:create"
    """)
    )
    (project / "broken_plugin" / "__init__.py").write_text(
        textwrap.dedent("""
        import numpy as np
        class P:
            def get_weights(self):
                return [np.zeros(3, np.float32)]
            def fit(self, weights, config):
                weights[0] += 1
                return weights, 1, {}
            def evaluate(self, weights, config):
                return 0.0, 1, {}
        def create(context):
            return P()
    """)
    )
    bad = subprocess.run(
        [sys.executable, "-m", "agent", "plugin", "check", str(project)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAIL  fit does not mutate its input" in bad.stdout
    good = subprocess.run(
        [sys.executable, "-m", "agent", "plugin", "check", "cancer-logreg"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert good.returncode == 0, good.stdout + good.stderr
    assert "conforms: 14 checks passed, 0 failed" in good.stdout


def test_plugin_list_shows_version_entry_point_and_options() -> None:
    """`fedbus plugin list --json` gives each plugin's version, entry point, default options
    (None for required ones), fit defaults and what it provides."""
    out = subprocess.run(
        [sys.executable, "-m", "agent", "plugin", "list", "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    plugins = {p["name"]: p for p in map(json.loads, out.splitlines())}
    assert {"digits-mlp", "cancer-logreg", "onnx", "command"} <= plugins.keys()
    digits = plugins["digits-mlp"]
    assert digits["entry_point"] == "fedbus_digits.plugin:create"
    assert digits["version"] == "0.1.0"
    assert digits["options"]["agent_index"] is None
    assert digits["options"]["alpha"] == 0.5
    assert digits["fit_config"]["lr"] == 0.4
    assert digits["exports"] == ["onnx"]
    assert plugins["command"]["distribution"] == "fedbus"
