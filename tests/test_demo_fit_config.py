"""`fedbus demo --fit-config K=V` reaches the aggregator's fit_config (which every fit_ins
carries), `--plugin` names an installed plugin, and agents learn how many share the machine."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from agent.cli.plugins import parse_fit_config
from agent.demo.configs import aggregator_config, plugin_options
from agent.demo.options import DemoOptions
from tests.helpers import fedbus

pytestmark = pytest.mark.timeout(60)


def test_fit_config_pairs_are_scalars() -> None:
    assert parse_fit_config(("lr=0.1", "epochs=2", "opt=adam", "nesterov=true")) == {
        "lr": 0.1,
        "epochs": 2,
        "opt": "adam",
        "nesterov": True,
    }
    with pytest.raises(click.BadParameter, match="not a scalar"):
        parse_fit_config(("lr=[1, 2]",))
    with pytest.raises(click.BadParameter, match="KEY=VALUE"):
        parse_fit_config(("lr",))


def test_the_aggregator_sends_the_demo_fit_config(tmp_path: Path) -> None:
    options = DemoOptions(agents=3, report_dir=tmp_path, fit_config={"lr": 0.2, "epochs": 1})
    config = aggregator_config(options, "nats://127.0.0.1:1", None)
    assert config.aggregator.fit_config == {"lr": 0.2, "epochs": 1}


def test_plugins_that_take_local_agents_get_the_agent_count() -> None:
    torch_options = plugin_options(DemoOptions(agents=7, plugin="digits-cnn"), 2, 7, "iid")
    assert torch_options["local_agents"] == 7
    assert torch_options["agent_index"] == 2
    mlp_options = plugin_options(DemoOptions(agents=7), 2, 7, "iid")
    assert "local_agents" not in mlp_options


def test_an_unknown_plugin_is_refused_with_the_installed_ones(tmp_path: Path) -> None:
    run = fedbus("demo", "--plugin", "nope", "--report-dir", str(tmp_path))
    assert run.returncode == 2
    assert "no plugin 'nope' installed" in run.stderr
    assert "digits-cnn" in run.stderr
    bad = fedbus("demo", "--fit-config", "lr=[1]", "--report-dir", str(tmp_path))
    assert bad.returncode == 2
    assert "not a scalar" in bad.stderr
