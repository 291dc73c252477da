"""The `fedbus` command as an operator uses it: separate `fedbus run` processes per role."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.brokers import EmbeddedBroker

pytestmark = pytest.mark.timeout(90)

TRAINER = """
role = "trainer"
agent_id = "{agent_id}"
federation = "plant"
bus_url = "{url}"
state_dir = "{state}"
[plugin]
name = "digits-mlp"
[plugin.options]
agent_index = {index}
num_agents = 2
[trainer]
join_retry = 0.3
"""

AGGREGATOR = """
role = "aggregator"
agent_id = "aggregator"
federation = "plant"
bus_url = "{url}"
state_dir = "{state}"
[plugin]
name = "digits-mlp"
[plugin.options]
agent_index = 0
num_agents = 2
[aggregator]
rounds = 2
min_fit_clients = {min_fit}
min_available_clients = {min_fit}
join_timeout = {join_timeout}
round_timeout = 20
"""


def fedbus(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.broker
def test_aggregator_and_trainers_as_separate_processes(
    nats_server: EmbeddedBroker, tmp_path: Path
) -> None:
    """An aggregator and two trainers, each `fedbus run --config`, federate: the aggregator
    runs its rounds, persists them, exports the final model (ONNX) and exits 0; the trainers
    stay up, idle, after `finish` and exit 0 on SIGTERM."""
    configs = [
        write(
            tmp_path / f"t{i}.toml",
            TRAINER.format(
                agent_id=f"dev-{i}", url=nats_server.url, state=tmp_path / f"dev-{i}", index=i
            ),
        )
        for i in range(2)
    ]
    trainers = [fedbus("run", "--config", str(c)) for c in configs]
    try:
        agg_config = write(
            tmp_path / "agg.toml",
            AGGREGATOR.format(
                url=nats_server.url, state=tmp_path / "agg", min_fit=2, join_timeout=30
            ),
        )
        aggregator = fedbus("run", "--config", str(agg_config))
        out, err = aggregator.communicate(timeout=60)
        assert aggregator.returncode == 0, out + err
        rounds = json.loads((tmp_path / "agg" / "metrics.json").read_text())
        assert [r["survivors"] for r in rounds] == [["dev-0", "dev-1"]] * 2
        assert (tmp_path / "agg" / "runs" / "run-0001" / "rounds" / "0002" / "model.npz").is_file()
        assert (tmp_path / "agg" / "model.onnx").is_file()  # the plugin's export of the result
        time.sleep(1.0)
        assert [t.poll() for t in trainers] == [None, None]  # still up after finish
        for t in trainers:
            t.send_signal(signal.SIGTERM)
        logs = [t.communicate(timeout=15)[0] for t in trainers]
        assert [t.returncode for t in trainers] == [0, 0]
        assert all('"federation_finished"' in log for log in logs)
        assert (tmp_path / "dev-0" / "global_model.npz").is_file()
    finally:
        for t in trainers:
            if t.poll() is None:
                t.kill()
                t.communicate()


@pytest.mark.broker
def test_aggregator_without_agents_fails_with_one_clear_line(
    nats_server: EmbeddedBroker, tmp_path: Path
) -> None:
    """An aggregator that nobody joins within join_timeout exits 2 with one line saying so."""
    config = write(
        tmp_path / "agg.toml",
        AGGREGATOR.format(url=nats_server.url, state=tmp_path / "agg", min_fit=1, join_timeout=1),
    )
    proc = fedbus("run", "--config", str(config))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert err.strip().splitlines()[-1] == (
        "fedbus: error: only 0 agent(s) joined within 1.0 s; at least 1 are needed"
    )
    assert "Traceback" not in err


def test_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """A config naming an unknown plugin fails before touching the network, in one line."""
    config = write(
        tmp_path / "t.toml",
        TRAINER.format(agent_id="d", url="nats://127.0.0.1:1", state=tmp_path, index=0).replace(
            "digits-mlp", "no-such-plugin"
        ),
    )
    proc = fedbus("run", "--config", str(config))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "no plugin named 'no-such-plugin'" in err
    assert "digits-mlp" in err  # lists what is installed
    assert "Traceback" not in err


def test_plugin_list_and_version() -> None:
    """`fedbus plugin list` finds the digits plugin by entry point; `--version` answers."""
    listed = subprocess.run(
        [sys.executable, "-m", "agent", "plugin", "list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "digits-mlp 0.1.0  (fedbus-digits: fedbus_digits.plugin:create)" in listed
    version = subprocess.run(
        [sys.executable, "-m", "agent", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert version.strip() == "fedbus, version 0.1.0"
