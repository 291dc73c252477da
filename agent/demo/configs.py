"""The demo's configs: one per agent process and the in-process aggregator's.

Every agent gets the plugin options the plugin takes (``agent_index``, ``num_agents``,
``partition``, ``alpha``, ``seed``: see ``agent.plugin.api``), so each holds its own shard,
and ``local_agents`` (every demo agent runs on this machine) so a plugin can share the
cores. ``--fit-config`` goes to the aggregator's ``fit_config``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from agent.config import (
    AgentConfig,
    AggregatorConfig,
    IdentityConfig,
    LoggingConfig,
    PluginConfig,
    SecAggConfig,
    SecureAggregation,
    StrategyConfig,
    StrategyName,
    TlsConfig,
    TrainerConfig,
)
from agent.demo.async_mode import mode_fields
from agent.demo.options import DemoOptions
from agent.demo.pki import AGGREGATOR_ID, DemoPki, tls_files
from agent.plugin.api import PluginInfo
from agent.plugin.loader import describe_plugin
from agent.privacy.config import PrivacyConfig, PrivacyMode
from agent.role import Role

#: The demo's federation id.
FEDERATION = "demo"


def plugin_options(
    options: DemoOptions, index: int, num_agents: int, partition: str
) -> dict[str, Any]:
    """One agent's ``[plugin.options]``: the partition options the plugin takes (see
    ``agent.plugin.api``), then ``options.plugin_options``."""
    info = describe_plugin(options.plugin).info
    candidates = {
        "agent_index": index,
        "num_agents": num_agents,
        "partition": partition,
        "alpha": options.alpha,
        "seed": options.seed,
        "local_agents": options.agents,
    }
    return {**{k: v for k, v in candidates.items() if info.takes(k)}, **options.plugin_options}


def partition_label(options: DemoOptions, info: PluginInfo) -> str:
    """How the data is split, for the demo's first line."""
    if not info.takes("partition"):
        return "data split by the plugin"
    if options.partition == "dirichlet":
        return f"Dirichlet α={options.alpha}"  # noqa: RUF001 - the field's symbol for it
    return "IID"


def trainer_config(options: DemoOptions, index: int, url: str, work: Path) -> AgentConfig:
    """Agent ``index``'s config (``agent-NN``, state in ``work/agent-NN``), before enrollment."""
    agent_id = f"agent-{index:02d}"
    return AgentConfig(
        role=Role.TRAINER,
        agent_id=agent_id,
        federation=FEDERATION,
        bus_url=url,
        state_dir=work / agent_id,
        plugin=PluginConfig(
            name=options.plugin,
            options=plugin_options(options, index, options.agents, options.partition),
        ),
        trainer=TrainerConfig(
            # a large fleet: fewer joins in flight (each answer is a model; a fleet process
            # may take seconds to read its members' answers)
            join_retry=max(0.5, options.agents / 50),
            require_secure_aggregation=(
                options.secure_aggregation == SecureAggregation.SECAGG_PLUS
            ),
        ),
        logging=LoggingConfig(level="info", format="json"),
    )


def write_config(path: Path, config: AgentConfig) -> Path:
    """Write ``config`` as TOML to ``path``; returns ``path``."""
    path.write_bytes(config.to_toml())
    return path


def enrolled_config(options: DemoOptions, path: Path) -> AgentConfig:
    """The config ``fedbus enroll`` wrote, with the demo's trainer and logging settings."""
    enrolled = AgentConfig.load(path)
    plain = trainer_config(options, 0, enrolled.bus_url, path.parent)
    return msgspec.structs.replace(enrolled, trainer=plain.trainer, logging=plain.logging)


def aggregator_config(options: DemoOptions, url: str, pki: DemoPki | None) -> AgentConfig:
    """The in-process aggregator's config (identity and TLS from ``pki`` unless insecure)."""
    secure = options.secure_aggregation == SecureAggregation.SECAGG_PLUS
    identity, tls = IdentityConfig(), TlsConfig()
    if pki is not None:
        identity = IdentityConfig(
            cert_file=pki.cert(AGGREGATOR_ID),
            key_file=pki.key(AGGREGATOR_ID),
            ca_file=pki.ca_file,
            ca_dir=pki.directory,
        )
        files = tls_files(pki, AGGREGATOR_ID, url)
        tls = TlsConfig(ca_file=files.ca_file, cert_file=files.cert_file, key_file=files.key_file)
    return AgentConfig(
        identity=identity,
        tls=tls,
        role=Role.AGGREGATOR,
        agent_id="aggregator",
        federation=FEDERATION,
        bus_url=url,
        state_dir=options.report_dir / "aggregator",
        plugin=PluginConfig(
            name=options.plugin,
            options=plugin_options(options, 0, options.agents, options.partition),
        ),
        aggregator=AggregatorConfig(
            rounds=options.rounds,
            fraction_fit=options.fraction_fit,
            min_fit_clients=3 if secure else 1,
            min_available_clients=options.agents,
            join_timeout=max(60.0, options.agents * 0.12),  # a fleet takes a while to start
            round_timeout=options.round_timeout,
            eval_every=1,
            eval_timeout=options.round_timeout,
            seed=options.seed,
            secure_aggregation=SecureAggregation(options.secure_aggregation),
            # a large fleet on one machine answers each SecAgg+ stage more slowly
            secagg=SecAggConfig(stage_timeout=max(10.0, options.agents / 30)),
            fit_config=dict(options.fit_config),
            strategy=StrategyConfig(name=StrategyName(options.strategy)),
            privacy=privacy_config(options),
            **mode_fields(options),  # --mode async: [aggregator.async]
        ),
    )


def privacy_config(options: DemoOptions) -> PrivacyConfig:
    """``[aggregator.privacy]`` from ``--dp``, ``--epsilon``, ``--delta``, ``--clip-norm``."""
    mode = PrivacyMode(options.dp)
    if mode is PrivacyMode.OFF:
        return PrivacyConfig()
    return PrivacyConfig(
        mode=mode,
        target_epsilon=options.epsilon,
        delta=options.delta,
        clip_norm=options.clip_norm,
    )
