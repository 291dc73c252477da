"""``fedbus``: run an agent, run the demo federation, list plugins.

Errors that are the user's to fix (``FedbusError``) print one line and exit 2; nothing
prints a traceback for them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from agent import __version__
from agent.errors import FedbusError
from agent.redact import redact


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fedbus")
def cli() -> None:
    """fedbus: federated learning over MQTT or NATS."""


@cli.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The agent's TOML config file.",
)
def run(config_path: Path) -> None:
    """Run an agent (trainer or aggregator) until SIGTERM."""
    from agent.config import AgentConfig
    from agent.logs import configure_logging
    from agent.node import run_node, run_until_signal

    config = AgentConfig.load(config_path)
    configure_logging(level=config.logging.level, fmt=config.logging.format)
    run_until_signal(run_node(config))


def _register_demo() -> None:
    from agent.cli.broker_config import broker_config
    from agent.cli.debug import listen, publish, status
    from agent.cli.demo import demo
    from agent.cli.fleet import fleet
    from agent.cli.identity import COMMANDS as IDENTITY_COMMANDS
    from agent.cli.ledger import ledger
    from agent.cli.plugins import plugin
    from agent.cli.predict import predict
    from agent.cli.runs import runs_group
    from agent.cli.service import service

    cli.add_command(demo)
    cli.add_command(plugin)
    cli.add_command(predict)
    for command in IDENTITY_COMMANDS:
        cli.add_command(command)
    cli.add_command(publish)
    cli.add_command(listen)
    cli.add_command(status)
    cli.add_command(broker_config)
    cli.add_command(service)
    cli.add_command(runs_group)
    cli.add_command(ledger)
    cli.add_command(fleet)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def main() -> None:
    """The console-script entry point."""
    _register_demo()
    try:
        code = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except FedbusError as exc:
        click.echo(f"fedbus: error: {redact(str(exc))}", err=True)
        sys.exit(getattr(exc, "exit_code", 2))
    except BaseExceptionGroup as group:
        fedbus_errors, rest = group.split(FedbusError)
        if fedbus_errors is None or rest is not None:
            raise
        leaves = _leaves(fedbus_errors)
        for error in leaves:
            click.echo(f"fedbus: error: {redact(str(error))}", err=True)
        sys.exit(max(getattr(e, "exit_code", 2) for e in leaves))
    sys.exit(code if isinstance(code, int) else 0)
