"""The ``command`` plugin: fit and evaluate in an external program, in any language.

The agent runs ``COMMAND... VERB IN OUT`` (FEDn's ``train in out``, generalised), where
``COMMAND`` is the ``command`` option (a list; the element ``"{python}"`` stands for the
agent's own interpreter), ``VERB`` is ``get_weights``, ``fit`` or ``evaluate``, and ``IN`` and
``OUT`` are fresh directories. The program reads ``IN``, writes ``OUT`` and exits 0.

``IN`` holds:

- ``context.json``: ``{"agent_id": str, "agent_index": int, "num_agents": int, "seed": int,
  "params": {...}}`` (``params`` is the ``params`` option, any JSON);
- for ``fit`` and ``evaluate``: ``weights.npz``, the model as ``numpy.savez`` writes it
  (arrays ``arr_0``, ``arr_1``, ... in order; plain arrays, never pickled objects), and
  ``config.json``, the aggregator's config (str → bool/int/float/str).

``OUT`` must receive:

- ``get_weights``: ``weights.npz`` (the initial model, same layout);
- ``fit``: ``weights.npz`` (same count, shapes and dtypes as given) and ``result.json`` =
  ``{"num_examples": int >= 1, "metrics": {str: scalar}}``;
- ``evaluate``: ``result.json`` = ``{"loss": float, "num_examples": int >= 0,
  "metrics": {str: scalar}}``.

Every output is read with ``allow_pickle=False`` and validated. A non-zero exit, a call
running past ``timeout`` seconds (its whole process group is killed), or missing or malformed
output is a ``PluginError`` carrying the tail of the program's stderr. The program runs in
its own session; if the agent itself is SIGKILLed mid-call, the program finishes on its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np
import structlog

from agent.errors import PluginError
from agent.plugin.api import (
    EvaluateResult,
    FitResult,
    PluginContext,
    PluginInfo,
    Scalar,
    Weights,
    describe_with,
)

DEFAULT_OPTIONS: Final[Mapping[str, Any]] = {
    "command": None,
    "cwd": ".",
    "timeout": 600.0,
    "env": {},
    "params": {},
    "agent_index": 0,
    "num_agents": 1,
    "seed": 0,
}
STDERR_TAIL: Final = 4000  # characters of stderr kept in an error message

log = structlog.get_logger(__name__)


class CommandPlugin:
    """Runs ``command`` for every call; see the module docstring for the file protocol."""

    def __init__(self, context: PluginContext) -> None:
        """Validate the options.

        Raises:
            PluginError: an unknown option, or a missing or mistyped one.
        """
        unknown = sorted(set(context.options) - set(DEFAULT_OPTIONS))
        if unknown:
            raise PluginError(
                f"command: unknown option(s) {unknown}; known: {sorted(DEFAULT_OPTIONS)}"
            )
        o = {**DEFAULT_OPTIONS, **context.options}
        command = o["command"]
        if (
            not isinstance(command, list)
            or not command
            or not all(isinstance(c, str) for c in command)
        ):
            raise PluginError(
                f"command: option 'command' must be a non-empty list of strings, got {command!r}"
            )
        timeout = o["timeout"]
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise PluginError(f"command: option 'timeout' must be seconds > 0, got {timeout!r}")
        env = o["env"]
        if not isinstance(env, Mapping) or not all(isinstance(v, str) for v in env.values()):
            raise PluginError("command: option 'env' must be a table of strings")
        for key in ("agent_index", "num_agents", "seed"):
            if isinstance(o[key], bool) or not isinstance(o[key], int) or o[key] < 0:
                raise PluginError(f"command: option {key!r} must be an int >= 0, got {o[key]!r}")
        self.argv = [sys.executable if c == "{python}" else c for c in command]
        self.cwd = Path(str(o["cwd"]))
        self.timeout = float(timeout)
        self.env = {**os.environ, **env, "FEDBUS_AGENT_ID": context.agent_id}
        self.context = {"agent_id": context.agent_id, "params": o["params"]} | {
            k: o[k] for k in ("agent_index", "num_agents", "seed")
        }
        self._tmp_root = context.state_dir

    def get_weights(self) -> Weights:
        """The program's ``get_weights``: the initial model."""
        return self._run("get_weights", None, {}, want_weights=True)[0]

    def fit(self, weights: Weights, config: Mapping[str, Scalar]) -> FitResult:
        """The program's ``fit`` on ``weights`` with ``config``."""
        new, result = self._run("fit", weights, config, want_weights=True)
        _like(new, weights)
        return FitResult(new, _count(result, "num_examples", 1), _metrics(result))

    def evaluate(self, weights: Weights, config: Mapping[str, Scalar]) -> EvaluateResult:
        """The program's ``evaluate`` of ``weights``."""
        _, result = self._run("evaluate", weights, config, want_weights=False)
        loss = result.get("loss")
        if isinstance(loss, bool) or not isinstance(loss, int | float) or not np.isfinite(loss):
            raise PluginError(
                f"command: evaluate result.json 'loss' must be a finite number, got {loss!r}"
            )
        return EvaluateResult(float(loss), _count(result, "num_examples", 0), _metrics(result))

    def _run(
        self,
        verb: str,
        weights: Weights | None,
        config: Mapping[str, Scalar],
        *,
        want_weights: bool,
    ) -> tuple[Weights, dict[str, Any]]:
        if self._tmp_root is not None:
            self._tmp_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"fedbus-{verb}-", dir=self._tmp_root) as tmp:
            indir, outdir = Path(tmp) / "in", Path(tmp) / "out"
            indir.mkdir()
            outdir.mkdir()
            (indir / "context.json").write_text(json.dumps(self.context))
            if weights is not None:
                np.savez(indir / "weights.npz", *[np.asarray(w) for w in weights])
                (indir / "config.json").write_text(json.dumps(dict(config)))
            self._execute(verb, indir, outdir)
            new = _read_weights(outdir / "weights.npz") if want_weights else []
            result = _read_result(outdir / "result.json") if verb != "get_weights" else {}
        return new, result

    def _execute(self, verb: str, indir: Path, outdir: Path) -> None:
        argv = [*self.argv, verb, str(indir), str(outdir)]
        started = time.perf_counter()
        try:
            process = subprocess.Popen(
                argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise PluginError(f"command: cannot start {argv[0]!r} (cwd {self.cwd}): {exc}") from exc
        try:
            _, stderr = process.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            _, stderr = process.communicate()
            raise PluginError(
                f"command: {verb} ran past its timeout of {self.timeout:g} s and was "
                f"killed; stderr:\n{_tail(stderr)}"
            ) from None
        except BaseException:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
        seconds = time.perf_counter() - started
        log.info(
            "command_finished",
            verb=verb,
            code=process.returncode,
            seconds=round(seconds, 3),
            stderr_bytes=len(stderr),
        )
        if process.returncode != 0:
            raise PluginError(
                f"command: {verb} exited with code {process.returncode}; stderr:\n{_tail(stderr)}"
            )


def _tail(stderr: bytes) -> str:
    text = stderr.decode("utf-8", errors="replace").rstrip()
    return text[-STDERR_TAIL:] if text else "(empty)"


def _read_weights(path: Path) -> Weights:
    """``path`` as written by ``numpy.savez``: arrays ``arr_0 .. arr_{n-1}``, numeric."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = set(npz.files)
            expected = {f"arr_{i}" for i in range(len(names))}
            if names != expected:
                raise PluginError(
                    f"command: {path.name} must hold arr_0 .. arr_{len(names) - 1}, "
                    f"got {sorted(names)}"
                )
            arrays = [npz[f"arr_{i}"] for i in range(len(names))]
    except (OSError, ValueError, EOFError) as exc:  # missing, not an npz, or pickled objects
        raise PluginError(f"command: cannot read {path.name}: {exc}") from exc
    for k, a in enumerate(arrays):
        if a.dtype.kind not in "biuf":
            raise PluginError(f"command: {path.name} array {k} has dtype {a.dtype}, not numeric")
    return arrays


def _read_result(path: Path) -> dict[str, Any]:
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PluginError(f"command: cannot read {path.name}: {exc}") from exc
    if not isinstance(result, dict):
        raise PluginError(f"command: {path.name} must hold a JSON object")
    return result


def _count(result: Mapping[str, Any], key: str, minimum: int) -> int:
    value = result.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PluginError(
            f"command: result.json {key!r} must be an int >= {minimum}, got {value!r}"
        )
    return value


def _metrics(result: Mapping[str, Any]) -> dict[str, Scalar]:
    metrics = result.get("metrics", {})
    if not isinstance(metrics, dict) or not all(
        isinstance(v, bool | int | float | str) for v in metrics.values()
    ):
        raise PluginError("command: result.json 'metrics' must map names to scalars")
    return dict(metrics)


def _like(new: Weights, given: Weights) -> None:
    got = [(a.dtype.str, a.shape) for a in new]
    expected = [(np.asarray(a).dtype.str, np.shape(a)) for a in given]
    if got != expected:
        raise PluginError(f"command: fit returned weights {got}, expected {expected}")


def describe() -> PluginInfo:
    """Options: ``command`` (required), ``cwd``, ``timeout`` (s), ``env``, ``params``, and the
    partition options forwarded to the program in ``context.json``."""
    return PluginInfo(
        summary="runs an external program (any language) for get_weights, fit and evaluate",
        options=DEFAULT_OPTIONS,
    )


@describe_with(describe)
def create(context: PluginContext) -> CommandPlugin:
    """The entry-point factory (``command = "agent.plugin.command:create"``)."""
    return CommandPlugin(context)
