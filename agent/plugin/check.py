"""``fedbus plugin check``: the conformance suite any plugin author can run.

``check_factory(factory)`` builds the plugin and runs every check, in the order below, against
the raw plugin (not the agent's ``CheckedPlugin`` guard, so that each fault is named by the
check it breaks, with the traceback of anything the plugin raised and the seconds each call
took). A check whose prerequisite failed is reported as not run. ``check_plugin(name)`` does
the same for an installed plugin, ``check_path(dir)`` for a plugin project that is not
installed. Nothing here touches the network.

What is checked, each as one line of the report:

- ``create``: the factory returns an object with ``get_weights``, ``fit`` and ``evaluate``;
- ``describe``: the factory's ``describe()`` hook (if any) returns JSON-encodable options;
- ``get_weights``: a non-empty list of finite numeric arrays that can travel as tensors;
- ``weights round trip``: those weights come back bit-identical (dtype, shape, bytes) from
  ``to_tensors`` → ``codec.encode`` → ``codec.decode`` → ``to_arrays``;
- ``model size``: values, bytes, and the bytes each agent receives and sends per round,
  plain and under SecAgg+, and whether those messages need chunking (``check_size``); it
  fails when a message cannot travel with ``max_payload``;
- ``fit``: returns ``(weights, num_examples, metrics)``, the weights finite and of the input's
  count, shapes and dtypes, ``num_examples`` an int >= 1, metrics a str → scalar dict;
- ``fit does not mutate its input``, and ``fit accepts read-only weights`` (as the agent
  hands them over, straight from the wire);
- ``fit result round trip``: the trained weights survive the wire like the initial ones;
- ``evaluate``: returns ``(loss, num_examples, metrics)`` with a finite loss;
- ``evaluate is deterministic``: the same weights give the same result twice;
- ``num_examples`` and ``export``: the optional hooks, when present, work.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.plugin import check_values as rules
from agent.plugin.api import PluginContext, PluginInfo, Scalar, Weights
from agent.plugin.check_report import CheckReport, CheckResult, Status
from agent.plugin.check_size import DEFAULT_MAX_PAYLOAD, model_size
from agent.plugin.loader import Factory, find_factory, plugin_info
from agent.plugin.source import factories_in_project

__all__ = ["CheckReport", "CheckResult", "check_factory", "check_path", "check_plugin"]


@dataclass
class _Run:
    """The state the checks share: the plugin, and what earlier checks produced."""

    factory: Factory
    name: str
    context: PluginContext
    fit_config: Mapping[str, Scalar]
    results: list[CheckResult] = field(default_factory=list)
    plugin: Any = None
    info: PluginInfo | None = None
    weights: Weights | None = None
    trained: Weights | None = None
    max_payload: int = DEFAULT_MAX_PAYLOAD

    def check(self, title: str, needs: tuple[str, ...], body: Callable[[], str]) -> bool:
        """Run one check unless a check it ``needs`` did not pass; record it."""
        failed = [n for n in needs if not self.passed(n)]
        if failed:
            self.results.append(CheckResult(title, Status.SKIPPED, f"needs {failed[0]}"))
            return False
        started = time.perf_counter()
        try:
            detail = body()
        except rules.RuleBrokenError as exc:
            status, detail, tb = Status.FAILED, str(exc), _traceback(exc.__cause__)
        except Exception as exc:  # noqa: BLE001 - whatever a plugin raises is reported
            status, detail, tb = Status.FAILED, f"raised {exc!r}", _traceback(exc)
        else:
            status, tb = Status.PASSED, None
        seconds = time.perf_counter() - started
        self.results.append(CheckResult(title, status, detail, seconds, tb))
        return status is Status.PASSED

    def passed(self, title: str) -> bool:
        return any(r.title == title and r.status is Status.PASSED for r in self.results)


def _traceback(exc: BaseException | None) -> str | None:
    if exc is None:
        return None
    return "".join(traceback.format_exception(exc)).rstrip()


def check_factory(
    factory: Factory,
    *,
    name: str = "plugin",
    options: Mapping[str, Any] | None = None,
    fit_config: Mapping[str, Scalar] | None = None,
    agent_id: str = "check-agent",
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> CheckReport:
    """Run the conformance suite on the plugin ``factory`` builds.

    Args:
        factory: the entry point's object (``create``).
        name: how the report names the plugin.
        options: the ``[plugin.options]`` to build it with. When the plugin's ``describe()``
            lists ``agent_index`` / ``num_agents`` and ``options`` does not set them, agent 0
            of 1 is used.
        fit_config: the config passed to ``fit`` (default ``{"round": 1}``).
        agent_id: the ``PluginContext.agent_id``.
        max_payload: the per-message limit the ``model size`` check measures against.

    Returns:
        The report; ``report.passed`` is the verdict. Never raises for a plugin's fault.
    """
    with tempfile.TemporaryDirectory(prefix="fedbus-check-") as tmp:
        (Path(tmp) / "state").mkdir()
        context = PluginContext(agent_id, dict(options or {}), Path(tmp) / "state")
        run = _Run(factory, name, context, dict(fit_config or {"round": 1}))
        run.max_payload = max_payload
        _suite(run, Path(tmp))
    return CheckReport(name, run.results)


def check_plugin(name: str, **kwargs: Any) -> CheckReport:
    """``check_factory`` on the installed plugin ``name`` (entry point in ``fedbus.plugins``).

    Raises:
        PluginError: no such plugin, or it cannot be imported.
    """
    ep, factory = find_factory(name)
    return check_factory(factory, name=f"{name} ({ep.value})", **kwargs)


def check_path(path: Path, **kwargs: Any) -> list[CheckReport]:
    """``check_factory`` on every ``fedbus.plugins`` entry point of the project at ``path``.

    Raises:
        PluginError: no ``pyproject.toml`` with such entry points, or one cannot be imported.
    """
    return [
        check_factory(factory, name=f"{ep_name} ({path})", **kwargs)
        for ep_name, factory in factories_in_project(path).items()
    ]


def _suite(run: _Run, tmp: Path) -> None:
    run.check("describe", (), lambda: _describe(run))
    run.check("create", (), lambda: _create(run))
    run.check("get_weights", ("create",), lambda: _get_weights(run))
    run.check("weights round trip", ("get_weights",), lambda: rules.round_trip(_initial(run)))
    run.check("model size", ("weights round trip",), lambda: _size(run))
    run.check("fit", ("get_weights",), lambda: _fit(run))
    run.check("fit does not mutate its input", ("fit",), lambda: _no_mutation(run, "fit"))
    run.check("fit accepts read-only weights", ("fit",), lambda: _read_only_fit(run))
    run.check("fit result round trip", ("fit",), lambda: rules.round_trip(run.trained or []))
    run.check("evaluate", ("get_weights",), lambda: _evaluate(run))
    run.check("evaluate is deterministic", ("evaluate",), lambda: _deterministic(run))
    run.check(
        "evaluate does not mutate its input", ("evaluate",), lambda: _no_mutation(run, "evaluate")
    )
    if hasattr(run.plugin, "num_examples"):
        run.check("num_examples", ("create",), lambda: _num_examples(run))
    if hasattr(run.plugin, "export"):
        run.check("export", ("get_weights",), lambda: _export(run, tmp))


def _initial(run: _Run) -> Weights:
    """The initial weights (only called once ``get_weights`` passed)."""
    assert run.weights is not None
    return run.weights


def _size(run: _Run) -> str:
    size = model_size(_initial(run), max_payload=run.max_payload)
    if not (size.plain.fits and size.secure.fits):
        raise rules.RuleBrokenError(
            f"{size.render()}; a message above max_payload = {run.max_payload:,} bytes "
            "cannot travel: raise max_payload (below the broker's own limit) or shrink the model"
        )
    return size.render()


def _describe(run: _Run) -> str:
    info = plugin_info(run.factory, run.name)
    try:
        json.dumps(dict(info.options))
    except (TypeError, ValueError) as exc:
        raise rules.RuleBrokenError(f"describe().options is not JSON-encodable: {exc}") from exc
    run.info = info
    if "agent_index" in info.options and "agent_index" not in run.context.options:
        extra = {"agent_index": 0, "num_agents": 1} if "num_agents" in info.options else {}
        run.context = PluginContext(
            run.context.agent_id, {**extra, **run.context.options}, run.context.state_dir
        )
    run.fit_config = {**info.fit_config, **run.fit_config}
    hook = "describe()" if hasattr(run.factory, "describe") else "no describe() hook (default)"
    return f"{hook}; built with options {json.dumps(dict(run.context.options))}"


def _create(run: _Run) -> str:
    try:
        plugin = run.factory(run.context)
    except Exception as exc:
        raise rules.RuleBrokenError(f"the factory raised {exc!r}") from exc
    verbs = ("get_weights", "fit", "evaluate")
    missing = [m for m in verbs if not callable(getattr(plugin, m, None))]
    if missing:
        raise rules.RuleBrokenError(f"{type(plugin).__name__} lacks {', '.join(missing)}")
    run.plugin = plugin
    return type(plugin).__name__


def _get_weights(run: _Run) -> str:
    weights = rules.arrays(rules.call(run.plugin.get_weights), "get_weights()")
    if not weights:
        raise rules.RuleBrokenError("get_weights() returned no arrays")
    run.weights = rules.copies(weights)
    return rules.describe_weights(weights)


def _fit(run: _Run) -> str:
    given = _initial(run)
    result = rules.call(run.plugin.fit, rules.copies(given), run.fit_config)
    new, n, metrics = rules.triple(result, "fit()")
    new = rules.arrays(new, "fit() weights")
    expected = [(a.dtype, a.shape) for a in given]
    got = [(a.dtype, a.shape) for a in new]
    if got != expected:
        raise rules.RuleBrokenError(
            "fit() must return the count, shapes and dtypes it was given: "
            f"got {rules.pairs(got)}, expected {rules.pairs(expected)}"
        )
    examples = rules.count(n, "fit() num_examples", 1)
    rules.metrics(metrics, "fit()")
    run.trained = new
    return f"{examples} examples; metrics {sorted(metrics)}"


def _no_mutation(run: _Run, verb: str) -> str:
    given = rules.copies(_initial(run))
    config = run.fit_config if verb == "fit" else {}
    rules.call(getattr(run.plugin, verb), given, config)
    for k, (before, after) in enumerate(zip(_initial(run), given, strict=True)):
        if after.shape != before.shape or not np.array_equal(before, after, equal_nan=True):
            raise rules.RuleBrokenError(
                f"{verb}() modified its input weights in place (array {k}); copy them first"
            )
    return "input unchanged"


def _read_only_fit(run: _Run) -> str:
    rules.call(run.plugin.fit, rules.wire(_initial(run)), run.fit_config)
    return "weights decoded from a message (read-only) are accepted"


def _evaluate(run: _Run) -> str:
    result = rules.call(run.plugin.evaluate, rules.wire(_initial(run)), {})
    loss, n, metrics = rules.triple(result, "evaluate()")
    if isinstance(loss, bool) or not isinstance(loss, int | float | np.floating):
        raise rules.RuleBrokenError(f"evaluate() loss must be a float, got {loss!r}")
    if not math.isfinite(float(loss)):
        raise rules.RuleBrokenError(f"evaluate() loss must be finite, got {loss!r}")
    examples = rules.count(n, "evaluate() num_examples", 0)
    shown = rules.metrics(metrics, "evaluate()")
    return f"loss {float(loss):.4g} on {examples} examples; metrics {shown}"


def _deterministic(run: _Run) -> str:
    first = rules.call(run.plugin.evaluate, rules.wire(_initial(run)), {})
    second = rules.call(run.plugin.evaluate, rules.wire(_initial(run)), {})
    if repr(first) != repr(second):
        raise rules.RuleBrokenError(f"evaluate() gave {first!r}, then {second!r} for one model")
    return "same result twice"


def _num_examples(run: _Run) -> str:
    return f"{rules.count(rules.call(run.plugin.num_examples), 'num_examples()', 0)} examples"


def _export(run: _Run, tmp: Path) -> str:
    target = tmp / "export" / "model"
    target.parent.mkdir()
    written = rules.call(run.plugin.export, rules.wire(_initial(run)), target)
    if not isinstance(written, Path | str) or not Path(written).is_file():
        raise rules.RuleBrokenError(f"export() must write a file and return its path: {written!r}")
    return f"{Path(written).name}, {Path(written).stat().st_size:,} bytes"
