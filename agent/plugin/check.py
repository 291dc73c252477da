"""``fedbus plugin check``: the conformance suite any plugin author can run.

``check_factory(factory)`` builds the plugin and runs every check in ``CHECKS`` order against
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

from agent.errors import FedbusError
from agent.messages import GlobalModel, decode, encode
from agent.messages.tensors import digest, to_arrays, to_tensors
from agent.plugin.api import PluginContext, PluginInfo, Scalar, Weights
from agent.plugin.check_report import CheckReport, CheckResult, Status
from agent.plugin.loader import Factory, find_factory, plugin_info
from agent.plugin.source import factories_in_project

__all__ = ["CheckReport", "CheckResult", "check_factory", "check_path", "check_plugin"]


class RuleBrokenError(Exception):
    """A check's verdict: the plugin broke the rule the message states."""


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

    def check(self, title: str, needs: tuple[str, ...], body: Callable[[], str]) -> bool:
        """Run one check unless a check it ``needs`` did not pass; record it."""
        failed = [n for n in needs if not self.passed(n)]
        if failed:
            self.results.append(CheckResult(title, Status.SKIPPED, f"needs {failed[0]}"))
            return False
        started = time.perf_counter()
        try:
            detail = body()
        except RuleBrokenError as exc:
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

    Returns:
        The report; ``report.passed`` is the verdict. Never raises for a plugin's fault.
    """
    with tempfile.TemporaryDirectory(prefix="fedbus-check-") as tmp:
        context = PluginContext(agent_id, dict(options or {}), Path(tmp) / "state")
        run = _Run(factory, name, context, dict(fit_config or {"round": 1}))
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
    ok = run.check("get_weights", ("create",), lambda: _get_weights(run))
    if ok:
        assert run.weights is not None
        weights = run.weights
        run.check("weights round trip", ("get_weights",), lambda: _round_trip(weights))
    run.check("fit", ("get_weights",), lambda: _fit(run))
    run.check("fit does not mutate its input", ("fit",), lambda: _no_mutation(run, "fit"))
    run.check("fit accepts read-only weights", ("fit",), lambda: _read_only_fit(run))
    if run.trained is not None:
        trained = run.trained
        run.check("fit result round trip", ("fit",), lambda: _round_trip(trained))
    run.check("evaluate", ("get_weights",), lambda: _evaluate(run))
    run.check("evaluate is deterministic", ("evaluate",), lambda: _deterministic(run))
    run.check("evaluate does not mutate its input", ("evaluate",),
              lambda: _no_mutation(run, "evaluate"))  # fmt: skip
    if hasattr(run.plugin, "num_examples"):
        run.check("num_examples", ("create",), lambda: _num_examples(run))
    if hasattr(run.plugin, "export"):
        run.check("export", ("get_weights",), lambda: _export(run, tmp))


def _describe(run: _Run) -> str:
    info = plugin_info(run.factory, run.name)
    try:
        json.dumps(dict(info.options))
    except (TypeError, ValueError) as exc:
        raise RuleBrokenError(f"describe().options is not JSON-encodable: {exc}") from exc
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
        raise RuleBrokenError(f"the factory raised {exc!r}") from exc
    missing = [
        m for m in ("get_weights", "fit", "evaluate") if not callable(getattr(plugin, m, None))
    ]
    if missing:
        raise RuleBrokenError(f"{type(plugin).__name__} lacks {', '.join(missing)}")
    run.plugin = plugin
    return type(plugin).__name__


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:
        raise RuleBrokenError(f"{getattr(fn, '__name__', 'call')}() raised {exc!r}") from exc


def _arrays(value: object, what: str) -> Weights:
    if not isinstance(value, list | tuple):
        raise RuleBrokenError(f"{what} must be a list of numpy arrays, got {type(value).__name__}")
    for k, a in enumerate(value):
        if not isinstance(a, np.ndarray):
            raise RuleBrokenError(f"{what}[{k}] is a {type(a).__name__}, not a numpy array")
        if a.dtype.kind not in "biuf":
            raise RuleBrokenError(f"{what}[{k}] has dtype {a.dtype}; weights must be numeric")
        if a.dtype.kind == "f" and not bool(np.isfinite(a).all()):
            raise RuleBrokenError(f"{what}[{k}] holds NaN or infinity")
    return list(value)


def _describe_weights(weights: Weights) -> str:
    shapes = ", ".join(f"{a.dtype} {a.shape}" for a in weights[:4])
    more = f", ... ({len(weights)} arrays)" if len(weights) > 4 else ""
    return f"{sum(a.size for a in weights):,} parameters: {shapes}{more}"


def _get_weights(run: _Run) -> str:
    weights = _arrays(_call(run.plugin.get_weights), "get_weights()")
    if not weights:
        raise RuleBrokenError("get_weights() returned no arrays")
    run.weights = [a.copy() for a in weights]
    return _describe_weights(weights)


def _wire(weights: Weights) -> Weights:
    """``weights`` as a receiver gets them: encoded in a message, decoded, read-only."""
    tensors = to_tensors(weights)
    body = GlobalModel(version=1, sha256=digest(tensors), tensors=tensors)
    message = decode(encode(body, federation="check", round=1, sender="check"))
    assert isinstance(message.body, GlobalModel)
    return to_arrays(message.body.tensors)


def _round_trip(weights: Weights) -> str:
    try:
        back = _wire(weights)
    except (ValueError, FedbusError) as exc:
        raise RuleBrokenError(f"the weights cannot travel: {exc}") from exc
    for k, (a, b) in enumerate(zip(weights, back, strict=True)):
        if a.shape != b.shape or a.dtype.newbyteorder("<") != b.dtype:
            raise RuleBrokenError(
                f"array {k} came back as {b.dtype} {b.shape}, sent {a.dtype} {a.shape}"
            )
        if a.tobytes() != np.ascontiguousarray(b, dtype=a.dtype).tobytes():
            raise RuleBrokenError(f"array {k} came back with different values")
    return f"{sum(len(t.data) for t in to_tensors(weights)):,} bytes of tensors"


def _metrics(value: object, what: str) -> dict[str, Scalar]:
    if not isinstance(value, Mapping):
        raise RuleBrokenError(f"{what} metrics must be a dict of str to scalar, got {value!r}")
    for key, v in value.items():
        if not isinstance(key, str) or not isinstance(v, bool | int | float | str):
            raise RuleBrokenError(
                f"{what} metric {key!r} = {v!r} is not a str → bool/int/float/str"
            )
    return dict(value)


def _count(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise RuleBrokenError(f"{what} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _triple(value: object, what: str) -> tuple[Any, Any, Any]:
    if not isinstance(value, tuple) or len(value) != 3:
        raise RuleBrokenError(f"{what} must return a 3-tuple, got {type(value).__name__}")
    return value[0], value[1], value[2]


def _fit(run: _Run) -> str:
    assert run.weights is not None
    new, n, metrics = _triple(_call(run.plugin.fit, _copies(run.weights), run.fit_config), "fit()")
    new = _arrays(new, "fit() weights")
    expected = [(a.dtype, a.shape) for a in run.weights]
    got = [(a.dtype, a.shape) for a in new]
    if got != expected:
        raise RuleBrokenError(f"fit() must return the count, shapes and dtypes it was given: "
                          f"got {_pairs(got)}, expected {_pairs(expected)}")  # fmt: skip
    count = _count(n, "fit() num_examples", 1)
    _metrics(metrics, "fit()")
    run.trained = new
    return f"{count} examples; metrics {sorted(metrics)}"


def _pairs(pairs: list[tuple[np.dtype[Any], tuple[int, ...]]]) -> str:
    return "[" + ", ".join(f"{d} {s}" for d, s in pairs) + "]"


def _copies(weights: Weights) -> Weights:
    return [a.copy() for a in weights]


def _no_mutation(run: _Run, verb: str) -> str:
    assert run.weights is not None
    given = _copies(run.weights)
    config = run.fit_config if verb == "fit" else {}
    _call(getattr(run.plugin, verb), given, config)
    for k, (before, after) in enumerate(zip(run.weights, given, strict=True)):
        if after.shape != before.shape or not np.array_equal(before, after, equal_nan=True):
            raise RuleBrokenError(f"{verb}() modified its input weights in place (array {k}); "
                              "copy them before training")  # fmt: skip
    return "input unchanged"


def _read_only_fit(run: _Run) -> str:
    assert run.weights is not None
    _call(run.plugin.fit, _wire(run.weights), run.fit_config)
    return "weights decoded from a message (read-only) are accepted"


def _evaluate(run: _Run) -> str:
    assert run.weights is not None
    loss, n, metrics = _triple(_call(run.plugin.evaluate, _wire(run.weights), {}), "evaluate()")
    if isinstance(loss, bool) or not isinstance(loss, int | float | np.floating):
        raise RuleBrokenError(f"evaluate() loss must be a float, got {loss!r}")
    if not math.isfinite(float(loss)):
        raise RuleBrokenError(f"evaluate() loss must be finite, got {loss!r}")
    count = _count(n, "evaluate() num_examples", 0)
    shown = _metrics(metrics, "evaluate()")
    return f"loss {float(loss):.4g} on {count} examples; metrics {shown}"


def _deterministic(run: _Run) -> str:
    assert run.weights is not None
    first = _call(run.plugin.evaluate, _wire(run.weights), {})
    second = _call(run.plugin.evaluate, _wire(run.weights), {})
    if repr(first) != repr(second):
        raise RuleBrokenError(f"evaluate() gave {first!r}, then {second!r} for the same weights")
    return "same result twice"


def _num_examples(run: _Run) -> str:
    return f"{_count(_call(run.plugin.num_examples), 'num_examples()', 0)} examples"


def _export(run: _Run, tmp: Path) -> str:
    assert run.weights is not None
    target = tmp / "export" / "model"
    target.parent.mkdir()
    written = _call(run.plugin.export, _wire(run.weights), target)
    if not isinstance(written, Path | str) or not Path(written).is_file():
        raise RuleBrokenError(f"export() must write a file and return its path, got {written!r}")
    return f"{Path(written).name}, {Path(written).stat().st_size:,} bytes"
