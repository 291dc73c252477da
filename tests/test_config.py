"""Config files: a good one loads, every bad one is a ConfigError naming the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.errors import ConfigError
from agent.role import Role

pytestmark = pytest.mark.timeout(30)

GOOD = """
role = "trainer"
agent_id = "agent-1"
federation = "demo"
bus_url = "nats://127.0.0.1:4222"
state_dir = "/var/lib/fedbus/demo"

[plugin]
name = "digits-mlp"
[plugin.options]
agent_index = 1
num_agents = 3

[aggregator]
rounds = 5
[aggregator.fit_config]
epochs = 2
"""


def test_good_config_loads_and_round_trips(tmp_path: Path) -> None:
    """A valid file gives typed values, and to_toml writes an equal config back."""
    path = tmp_path / "agent.toml"
    path.write_text(GOOD)
    config = AgentConfig.load(path)
    assert config.role is Role.TRAINER
    assert config.state_dir == Path("/var/lib/fedbus/demo")
    assert config.aggregator.rounds == 5
    assert config.aggregator.fit_config == {"epochs": 2}
    assert config.plugin.options == {"agent_index": 1, "num_agents": 3}
    assert AgentConfig.parse(config.to_toml()) == config


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (('role = "trainer"', 'role = "boss"'), "role"),
        (('agent_id = "agent-1"', 'agent_id = "agent/1"'), "agent_id"),
        (("rounds = 5", "rounds = -1"), "rounds"),  # 0 is continuous training
        (("rounds = 5", "rouns = 5"), "rouns"),
        (
            ("rounds = 5", "rounds = 5\nmin_fit_clients = 9\nmin_available_clients = 3"),
            "min_fit_clients",
        ),
        (("rounds = 5", 'rounds = "five"'), "rounds"),
        (('bus_url = "nats://127.0.0.1:4222"\n', ""), "bus_url"),
        (("[plugin.options]", "[plugin.options"), "TOML"),
    ],
)
def test_bad_configs_are_config_errors(change: tuple[str, str], fragment: str) -> None:
    """Wrong values, unknown or missing keys and broken TOML name the key or the syntax."""
    with pytest.raises(ConfigError, match=fragment):
        AgentConfig.parse(GOOD.replace(*change))


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    """A missing file is a ConfigError naming it."""
    with pytest.raises(ConfigError, match=r"missing\.toml"):
        AgentConfig.load(tmp_path / "missing.toml")
