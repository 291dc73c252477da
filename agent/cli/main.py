"""``fedbus``: run an agent, run the demo federation, list plugins.

Errors that are the user's to fix (``FedbusError``) print one line and exit 2; nothing
prints a traceback for them.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click

from agent import __version__
from agent.errors import FedbusError
from agent.redact import redact
from agent.runtime.blas import quiet_blas_threads

#: Every command but ``run``, as ``module:attribute``, imported only when it is asked for:
#: ``fedbus run`` on a device loads none of them (the demo alone would load the aggregator).
LAZY_COMMANDS = {
    "demo": "agent.cli.demo:demo",
    "plugin": "agent.cli.plugins:plugin",
    "predict": "agent.cli.predict:predict",
    "ca": "agent.cli.identity:ca_group",
    "token": "agent.cli.identity:token_group",
    "agents": "agent.cli.identity:agents_group",
    "revoke": "agent.cli.identity:revoke",
    "enroll": "agent.cli.enroll:enroll",
    "publish": "agent.cli.debug:publish",
    "listen": "agent.cli.debug:listen",
    "status": "agent.cli.debug:status",
    "broker-config": "agent.cli.broker_config:broker_config",
    "service": "agent.cli.service:service",
    "runs": "agent.cli.runs:runs_group",
    "ledger": "agent.cli.ledger:ledger",
    "fleet": "agent.cli.fleet:fleet",
}


class LazyGroup(click.Group):
    """A click group whose ``LAZY_COMMANDS`` are imported on first use (``fedbus --help``
    imports them all, to list them)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in LAZY_COMMANDS:
            module, _, attribute = LAZY_COMMANDS[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attribute)
            assert isinstance(command, click.Command)
            self.add_command(command, cmd_name)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
    from agent.node_base import run_until_signal
    from agent.role import Role

    config = AgentConfig.load(config_path)
    configure_logging(level=config.logging.level, fmt=config.logging.format)
    if config.role is Role.TRAINER:  # a device: the trainer's imports only
        from agent.node_trainer import run_trainer

        run_until_signal(run_trainer(config))
        return
    from agent.node import run_node

    run_until_signal(run_node(config))


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def main() -> None:
    """The console-script entry point."""
    quiet_blas_threads()  # before anything imports numpy (agent.runtime.blas)
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
