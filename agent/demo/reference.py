"""The demo's centralized reference, trained beside the federation instead of before it.

``centralized_accuracy`` fits the same model on all the training data once per round;
run first, it kept every agent idle for as long (minutes with ``--rounds 3000``). Here it
runs in a child process of its own (``spawn``: a fresh interpreter, none of the demo's
threads or broker handles) at the lowest CPU priority (``nice 19``), so round 1 starts at
once and the agents' training takes the CPUs first; the demo asks for the result after the
federation, for its last line and its report.

The child dies with the demo (``agent.children.die_with_parent``) and is terminated when the
demo ends early (``Reference.close``, also on Ctrl-C).
"""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing.connection import Connection
from typing import Self

from agent.children import die_with_parent
from agent.demo.configs import plugin_options
from agent.demo.options import DemoOptions
from agent.errors import FedbusError, PluginError
from agent.plugin.api import PluginContext
from agent.plugin.loader import describe_plugin, load_plugin

#: ``os.nice`` increment of the reference's process: the lowest priority.
NICENESS = 19


def centralized_accuracy(options: DemoOptions) -> float | None:
    """The reference: the same model trained on all the training data, one ``fit`` per round
    with the run's fit config (so the same number of passes as each agent makes), evaluated
    on the whole test split.

    Only for plugins that take ``num_agents`` (one agent of one holds all the data); None
    for others, and when the plugin reports no ``accuracy``."""
    if not describe_plugin(options.plugin).info.takes("num_agents"):
        return None
    context = PluginContext("centralized", plugin_options(options, 0, 1, "iid"))
    plugin = load_plugin(options.plugin, context)
    weights = plugin.get_weights()
    for r in range(1, options.rounds + 1):
        weights = plugin.fit(weights, {**options.fit_config, "round": r}).weights
    accuracy = plugin.evaluate(weights, {}).metrics.get("accuracy")
    return None if isinstance(accuracy, str) or accuracy is None else float(accuracy)


class Reference:
    """The centralized reference of ``options``, computed in a low-priority child process.

    Use as a context manager (the child is terminated on exit if still running).
    """

    def __init__(self, options: DemoOptions) -> None:
        context = multiprocessing.get_context("spawn")
        self._receive, send = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_compute, args=(options, send), name="fedbus-demo-reference", daemon=True
        )
        self._process.start()
        send.close()  # the child holds the only sending end: its death ends the pipe

    def result(self) -> float | None:
        """Wait for the reference accuracy (a fraction; None when the plugin has none).

        Raises:
            PluginError: the reference failed (its message), or its process died.
        """
        try:
            ok, value = self._receive.recv()
        except EOFError:
            raise PluginError(
                f"the centralized reference's process died (exit {self._process.exitcode})"
            ) from None
        finally:
            self.close()
        if not ok:
            raise PluginError(f"centralized reference: {value}")
        return None if value is None else float(value)

    def close(self) -> None:
        """Stop the child if it still runs, and reap it. Safe to call twice."""
        if self._process.is_alive():
            self._process.terminate()
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._receive.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _compute(options: DemoOptions, send: Connection) -> None:
    """The child: lowest priority, die with the demo, send ``(True, accuracy)`` or
    ``(False, message)``."""
    die_with_parent()
    os.nice(NICENESS)
    try:
        answer: tuple[bool, float | str | None] = (True, centralized_accuracy(options))
    except FedbusError as exc:  # the plugin's (CheckedPlugin wraps what it raises)
        answer = (False, str(exc))
    send.send(answer)
    send.close()
