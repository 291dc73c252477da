"""A model's accuracy over every agent's test slice: one measure for every ``fedbus demo``
mode, so that sync, async and p2p are compared on the same data.

A run's federated evaluation (``agent.roles.aggregator.evaluation``) asks the agents online
at that moment: in a fleet with duty-cycled agents each version is scored on a different
subset of the test slices (on digits with 20 agents, 17 or 18 slices of about 18 examples,
one example = 0.28 points), so two evaluations of the same model differ by a point and two
modes are scored on different data. Here the model is evaluated with each agent's plugin
(``plugin_options``: the agent's own partition options) on that agent's slice, and the
accuracies are combined weighted by num_examples: for a plugin whose slices split its test
set (digits: ``test_slice``), the accuracy on the whole test set.

``SliceEvaluator`` loads the plugins once; ``versions_accuracy`` scores every model version
an aggregator committed (``state_dir/runs/<run>/rounds/NNNN/model.npz``,
``agent.roles.aggregator.persistence``); ``agent.demo.p2p_mean`` scores the peers' models.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import structlog

from agent.demo.configs import plugin_options
from agent.demo.options import DemoOptions
from agent.errors import PluginError
from agent.plugin.api import PluginContext, Weights
from agent.plugin.loader import CheckedPlugin, load_plugin
from agent.roles.aggregator.runs import run_ids, runs_dir
from agent.state import read_weights

log = structlog.get_logger(__name__)


class SliceEvaluator:
    """Evaluates a model with each of ``plugins`` (one per agent, each on its test slice)."""

    def __init__(self, plugins: Sequence[CheckedPlugin]) -> None:
        self._plugins = list(plugins)

    @classmethod
    def of_demo(cls, options: DemoOptions) -> SliceEvaluator:
        """One plugin per agent of the demo ``options``, as its agents load theirs.

        Raises:
            PluginError: the plugin cannot be loaded.
        """
        return cls(
            [
                load_plugin(
                    options.plugin,
                    PluginContext(
                        f"slice-{i:02d}",
                        plugin_options(options, i, options.agents, options.partition),
                    ),
                )
                for i in range(options.agents)
            ]
        )

    def accuracy(self, weights: Weights) -> float | None:
        """The num_examples-weighted mean of the plugins' ``accuracy`` on ``weights`` (a
        fraction); None when no plugin reports one. A plugin that fails is left out (logged)."""
        correct = total = 0.0
        for plugin in self._plugins:
            try:
                result = plugin.evaluate(weights, {})
            except PluginError as exc:
                log.warning("final_model_not_evaluated", error=str(exc))
                continue
            accuracy = result.metrics.get("accuracy")
            if isinstance(accuracy, int | float):
                correct += float(accuracy) * result.num_examples
                total += result.num_examples
        return correct / total if total else None


def versions_accuracy(state_dir: Path, evaluator: SliceEvaluator) -> dict[int, float]:
    """Round (model version) → the accuracy of the model committed after it, over every
    slice, for the newest run in the aggregator's ``state_dir`` (round 0: the initial
    model); rounds without an accuracy are left out, ``{}`` when there is no run."""
    ids = run_ids(state_dir)
    if not ids:
        return {}
    rounds = runs_dir(state_dir) / ids[-1] / "rounds"
    out: dict[int, float] = {}
    for path in sorted(rounds.glob("[0-9][0-9][0-9][0-9]/model.npz")):
        accuracy = evaluator.accuracy(read_weights(path))
        if accuracy is not None:
            out[int(path.parent.name)] = accuracy
    return out
