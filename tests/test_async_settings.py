"""``[aggregator.async]``: the staleness functions s(τ), what the config refuses, what the
fit config carries to an agent, and ``fedbus demo --mode async``'s settings."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from agent.async_settings import AsyncConfig, Staleness, from_fit_config, staleness_weight
from agent.config import AgentConfig
from agent.demo.async_mode import mode_fields
from agent.demo.options import DemoOptions
from agent.errors import ConfigError
from tests.helpers import fedbus

pytestmark = pytest.mark.timeout(10)

BASE = """role = "aggregator"
agent_id = "aggregator"
federation = "fed"
bus_url = "mem://"
state_dir = "/tmp/unused"
[plugin]
name = "toy"
[aggregator]
mode = "async"
"""


def test_the_staleness_functions() -> None:
    assert staleness_weight(3, Staleness.POLYNOMIAL) == 0.5  # FedBuff's 1/sqrt(1 + τ)
    assert staleness_weight(3, Staleness.POLYNOMIAL, exponent=1.0) == 0.25
    assert staleness_weight(0, Staleness.POLYNOMIAL) == 1.0
    assert staleness_weight(9, Staleness.CONSTANT) == 1.0
    assert staleness_weight(4, Staleness.HINGE, a=10, b=4) == 1.0
    assert staleness_weight(6, Staleness.HINGE, a=10, b=4) == 1 / 21
    with pytest.raises(ValueError, match="< 0"):
        staleness_weight(-1, Staleness.CONSTANT)


def test_an_agent_reads_the_same_weight_from_its_fit_config() -> None:
    settings = AsyncConfig(staleness=Staleness.HINGE, hinge_a=2.0, hinge_b=1)
    for tau in range(6):
        assert from_fit_config(settings.fit_config(), tau) == settings.weight(tau)
    with pytest.raises(ValueError, match="staleness"):
        from_fit_config({}, 1)
    with pytest.raises(ValueError, match="finite"):
        from_fit_config({**settings.fit_config(), "staleness_exponent": math.inf}, 1)


def test_the_async_table_parses_and_refuses_what_async_cannot_do() -> None:
    config = AgentConfig.parse(
        BASE + '[aggregator.async]\nbuffer_size = 3\nstaleness = "constant"\n'
    )
    assert config.aggregator.async_ == AsyncConfig(buffer_size=3, staleness=Staleness.CONSTANT)
    with pytest.raises(ConfigError, match="DP"):
        AgentConfig.parse(BASE + '[aggregator.privacy]\nmode = "central"\ntarget_epsilon = 8.0\n')
    with pytest.raises(ConfigError, match="buffer_size = 2 under SecAgg"):
        AgentConfig.parse(
            BASE + 'secure_aggregation = "secagg+"\n[aggregator.async]\nbuffer_size = 2\n'
        )
    with pytest.raises(ConfigError, match="unknown"):
        AgentConfig.parse(BASE + "[aggregator.async]\nbuffer = 3\n")


def test_demo_mode_async_sets_the_async_table() -> None:
    assert mode_fields(DemoOptions()) == {}
    fields = mode_fields(DemoOptions(mode="async", agents=10, secure_aggregation="none"))
    assert fields["async_"] == AsyncConfig(concurrency=10, buffer_size=5)
    secure = mode_fields(DemoOptions(mode="async", agents=6))  # SecAgg+ by default
    assert secure["async_"].buffer_size == 4
    with pytest.raises(ValueError, match="buffer-size"):
        mode_fields(DemoOptions(mode="async", agents=3, buffer_size=5))
    with pytest.raises(ValueError, match="at least 4 agents"):
        mode_fields(DemoOptions(mode="async", agents=3))  # SecAgg+'s smallest buffer


def test_a_demo_buffer_that_could_never_fill_is_a_usage_error(tmp_path: Path) -> None:
    """``fedbus demo --mode async --agents 3`` (SecAgg+ by default) exits 2 with the fix
    before it starts anything: no header, no traceback."""
    run = fedbus("demo", "--mode", "async", "--agents", "3", "--report-dir", str(tmp_path / "r"))
    assert run.returncode == 2, run.stdout + run.stderr
    assert "--secure-aggregation none" in run.stderr
    assert "Traceback" not in run.stderr
    assert "fedbus demo:" not in run.stdout
    assert not (tmp_path / "r").exists()
