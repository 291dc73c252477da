"""`fedbus plugin new`: the generated project installs, passes its own tests and the
conformance suite, and trains in `fedbus demo`.

The project is installed with ``pip install --no-deps --no-build-isolation --target`` into a
folder under ``tmp_path`` that only this test's subprocesses see (through PYTHONPATH), so the
repository's virtual environment is never changed and nothing is left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import PluginError
from agent.plugin.scaffold import new_plugin, placeholders

pytestmark = pytest.mark.timeout(120)


def run(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), capture_output=True, text=True, check=False, env=env, cwd=cwd, timeout=100
    )


@pytest.mark.broker
def test_new_plugin_installs_checks_tests_and_runs_in_the_demo(tmp_path: Path) -> None:
    """plugin new myplugin → pip install ./myplugin → plugin check myplugin passes → the
    generated tests pass → fedbus demo --plugin myplugin trains it over a real broker."""
    fedbus = [sys.executable, "-m", "agent"]
    site = tmp_path / "site"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(Path.cwd())])}
    created = run(
        *fedbus, "plugin", "new", "myplugin", "--dir", str(tmp_path), env=env, cwd=tmp_path
    )
    assert created.returncode == 0, created.stderr
    project = tmp_path / "myplugin"
    assert {p.name for p in project.iterdir()} >= {
        "pyproject.toml",
        "README.md",
        "myplugin",
        "tests",
    }

    install = run(
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--target",
        str(site),
        str(project),
        env=env,
        cwd=tmp_path,
    )
    assert install.returncode == 0, install.stdout + install.stderr

    listed = run(*fedbus, "plugin", "list", "--json", env=env, cwd=tmp_path)
    plugins = {p["name"]: p for p in map(json.loads, listed.stdout.splitlines())}
    assert plugins["myplugin"]["distribution"] == "fedbus-myplugin"
    assert plugins["myplugin"]["options"]["num_agents"] == 1

    check = run(*fedbus, "plugin", "check", "myplugin", env=env, cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "conforms:" in check.stdout

    tests = run(
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        str(project),
        env=env,
        cwd=project,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "2 passed" in tests.stdout

    report = tmp_path / "report"
    demo = run(
        *fedbus,
        "demo",
        "--plugin",
        "myplugin",
        "--agents",
        "3",
        "--rounds",
        "3",
        "--report-dir",
        str(report),
        env={**env, "TMPDIR": str(tmp_path)},
        cwd=tmp_path,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["settings"]["plugin"] == "myplugin"
    assert [len(r["survivors"]) for r in metrics["rounds"]] == [3, 3, 3]
    assert metrics["final_accuracy"] > 0.6  # chance is 1/3
    assert metrics["centralized_accuracy"] > 0.6  # the plugin takes num_agents: reference run


def test_bad_names_and_existing_folders_are_refused(tmp_path: Path) -> None:
    """Names that cannot be an entry point and module, and a non-empty target folder, are
    PluginErrors; a hyphenated name becomes a module with underscores."""
    for bad in ("1plugin", "my plugin", "a/b", ""):
        with pytest.raises(PluginError, match="must start with a letter"):
            new_plugin(bad, tmp_path)
    assert placeholders("my-plugin")["module"] == "my_plugin"
    assert placeholders("my-plugin")["cls"] == "MyPluginPlugin"
    root = new_plugin("my-plugin", tmp_path)
    assert (root / "my_plugin" / "plugin.py").is_file()
    with pytest.raises(PluginError, match="not empty"):
        new_plugin("my-plugin", tmp_path)
