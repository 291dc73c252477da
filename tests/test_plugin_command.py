"""The `command` plugin: an external program trains in a real federation, and every way a
program can fail (exit code, timeout, pickled or malformed output) is a PluginError with its
stderr."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from agent.brokers import EmbeddedBroker
from agent.errors import PluginError
from agent.plugin.api import PluginContext
from agent.plugin.command import CommandPlugin, create
from tests.helpers import agent_log_lines

EXAMPLE = Path(__file__).resolve().parents[1] / "plugins" / "command-example" / "train.py"


def program(tmp_path: Path, body: str) -> CommandPlugin:
    """A command plugin running ``body`` as ``python prog.py VERB IN OUT``."""
    path = tmp_path / "prog.py"
    path.write_text(textwrap.dedent(body))
    return create(PluginContext("a", {"command": ["{python}", str(path)], "timeout": 5}, tmp_path))


@pytest.mark.broker
@pytest.mark.timeout(120)
def test_the_example_program_takes_part_in_a_real_federation(
    nats_server: EmbeddedBroker, tmp_path: Path
) -> None:
    """Three agent processes whose plugin runs plugins/command-example/train.py federate over
    nats-server: every agent survives every round, the model learns, and the agents' logs
    show the program's fit and evaluate calls."""
    report = tmp_path / "report"
    command = json.dumps(["{python}", str(EXAMPLE)])
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "demo",
            "--plugin",
            "command",
            "--plugin-option",
            f"command={command}",
            "--bus-url",
            nats_server.url,
            "--agents",
            "3",
            "--rounds",
            "3",
            "--report-dir",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    metrics = json.loads((report / "metrics.json").read_text())
    rounds = metrics["rounds"]
    assert [r["survivors"] for r in rounds] == [["agent-00", "agent-01", "agent-02"]] * 3
    assert metrics["final_accuracy"] > 0.75  # two overlapping Gaussians; chance is 0.5
    assert metrics["centralized_accuracy"] > 0.75
    log = agent_log_lines(report / "logs", "agent-01")
    finished = [e for e in log if e["event"] == "command_finished"]
    assert {e["verb"] for e in finished} == {"fit", "evaluate"}
    assert all(e["code"] == 0 for e in finished)


def test_the_example_program_round_trips_files(tmp_path: Path) -> None:
    """get_weights, fit and evaluate through the example: shapes kept, inputs untouched,
    agent_index/num_agents forwarded (two agents hold disjoint halves)."""

    def make(i: int) -> CommandPlugin:
        context = PluginContext(
            f"a{i}",
            {"command": ["{python}", str(EXAMPLE)], "agent_index": i, "num_agents": 2},
            tmp_path / f"a{i}",
        )
        return create(context)

    first, second = make(0), make(1)
    weights = first.get_weights()
    assert [(w.dtype, w.shape) for w in weights] == [(np.float32, (5,)), (np.float32, (1,))]
    fitted = first.fit(weights, {"epochs": 5, "lr": 0.5})
    assert fitted.num_examples == 320
    assert not np.array_equal(fitted.weights[0], weights[0])
    assert np.array_equal(weights[0], np.zeros(5, np.float32))
    result = second.evaluate(fitted.weights, {})
    assert result.num_examples == 80
    assert 0.5 < float(result.metrics["accuracy"]) <= 1.0


def test_a_failing_program_is_a_plugin_error_with_its_stderr(tmp_path: Path) -> None:
    """A non-zero exit raises PluginError with the exit code and the program's stderr."""
    plugin = program(
        tmp_path,
        """
        import sys
        print("loading data from /nowhere failed", file=sys.stderr)
        sys.exit(3)
    """,
    )
    with pytest.raises(PluginError, match=r"(?s)exited with code 3.*/nowhere failed"):
        plugin.get_weights()


def test_a_program_past_its_timeout_is_killed(tmp_path: Path) -> None:
    """A program that outlives ``timeout`` is killed with its process group and reported
    with what it had written to stderr."""
    path = tmp_path / "slow.py"
    path.write_text(
        "import sys, time\nprint('still training', file=sys.stderr, flush=True)\ntime.sleep(60)\n"
    )
    plugin = create(PluginContext("a", {"command": ["{python}", str(path)], "timeout": 1.0}))
    with pytest.raises(PluginError, match=r"(?s)past its timeout of 1 s.*still training"):
        plugin.get_weights()


def test_pickled_weights_are_refused(tmp_path: Path) -> None:
    """An npz holding a pickled object array is never unpickled: PluginError."""
    plugin = program(
        tmp_path,
        """
        import sys
        import numpy as np
        np.savez(sys.argv[3] + "/weights.npz", np.array([{"evil": 1}], dtype=object))
    """,
    )
    with pytest.raises(PluginError, match=r"cannot read weights\.npz"):
        plugin.get_weights()


@pytest.mark.parametrize(
    ("result", "match"),
    [
        ('{"num_examples": 0, "metrics": {}}', "'num_examples' must be an int >= 1"),
        ('{"num_examples": 4, "metrics": {"m": [1]}}', "metrics"),
        ("not json", "cannot read result.json"),
    ],
)
def test_malformed_fit_results_are_refused(tmp_path: Path, result: str, match: str) -> None:
    """fit's result.json must carry num_examples >= 1 and scalar metrics."""
    plugin = program(
        tmp_path,
        f"""
        import shutil, sys
        shutil.copy(sys.argv[2] + "/weights.npz", sys.argv[3] + "/weights.npz")
        open(sys.argv[3] + "/result.json", "w").write({result!r})
    """,
    )
    with pytest.raises(PluginError, match=match):
        plugin.fit([np.zeros(3, np.float32)], {})


def test_fit_returning_other_shapes_is_refused(tmp_path: Path) -> None:
    """Weights of another shape from the program are a PluginError naming both layouts."""
    plugin = program(
        tmp_path,
        """
        import sys
        import numpy as np
        np.savez(sys.argv[3] + "/weights.npz", np.zeros(4, np.float32))
        open(sys.argv[3] + "/result.json", "w").write('{"num_examples": 1}')
    """,
    )
    with pytest.raises(PluginError, match=r"fit returned weights \[\('<f4', \(4,\)\)\]"):
        plugin.fit([np.zeros(3, np.float32)], {})


def test_bad_options_are_plugin_errors() -> None:
    """A missing command, a string instead of a list, a bad timeout or an unknown key."""
    for options, match in [
        ({}, "'command' must be a non-empty list"),
        ({"command": "python train.py"}, "'command' must be a non-empty list"),
        ({"command": ["x"], "timeout": 0}, "timeout"),
        ({"command": ["x"], "comand": ["y"]}, "unknown option"),
    ]:
        with pytest.raises(PluginError, match=match):
            create(PluginContext("a", options))
