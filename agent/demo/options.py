"""What ``fedbus demo`` can be asked to do; the single source of its defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What ``fedbus demo`` was asked to do (see its ``--help``)."""

    agents: int = 10
    rounds: int = 20
    partition: str = "dirichlet"
    alpha: float = 0.5
    bus: str = "nats"
    bus_url: str | None = None
    report_dir: Path = Path("fedbus-report")
    seed: int = 0
    fraction_fit: float = 1.0
    round_timeout: float = 30.0
    kill_agents: int = 0
    #: "secagg+" (the aggregator sees only the cohort's sum) or "none"
    secure_aggregation: str = "secagg+"
    #: the server-side strategy (``agent.config.StrategyName``), its parameters the defaults
    strategy: str = "fedavg"
    #: differential privacy ([aggregator.privacy] mode): "off", "central" or "distributed"
    dp: str = "off"
    #: the DP budget ε (target_epsilon; the noise is calibrated to spend it over the rounds)
    epsilon: float = 0.0
    #: δ of the (ε, δ) guarantee
    delta: float = 1e-5
    #: the L2 clip norm C of every agent's model delta under DP
    clip_norm: float = 1.0
    #: no identities: no CA, enrollment, TLS, ACLs, signatures or sealing (debugging only)
    insecure: bool = False
    plugin: str = "digits-mlp"
    #: extra ``[plugin.options]`` for every agent (``--plugin-option KEY=VALUE``)
    plugin_options: Mapping[str, Any] = field(default_factory=dict)
    #: the aggregator's ``fit_config`` (``--fit-config KEY=VALUE``), over the plugin's defaults
    fit_config: Mapping[str, Any] = field(default_factory=dict)
    #: ``[aggregator] mode`` (``agent.config.TrainingMode``): "sync", "async" or "p2p"
    mode: str = "sync"
    #: async: K updates per version (0: ``agent.demo.async_mode``'s default)
    buffer_size: int = 0
    #: async: agents training at once (0: every agent)
    concurrency: int = 0
    #: async: ``agent.async_settings.Participation`` ("interval": FedAU's weights; "none")
    participation: str = "none"
    #: the first ``slow_agents`` agents fit ``slowdown`` times slower ([simulate] slowdown)
    slow_agents: int = 0
    slowdown: float = 1.0
    #: every agent's simulated compute seconds per fit ([simulate] fit_seconds; 0: off)
    fit_seconds: float = 0.0
    #: the next ``duty_agents`` agents are connected ``duty_cycle`` of every ``duty_period`` s
    duty_agents: int = 0
    duty_cycle: float = 1.0
    duty_period: float = 10.0
