"""``fedbus plugin list|new|check|export``: working with plugins."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from agent.plugin.api import Scalar


def parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as a dict; a VALUE that parses as JSON is taken as JSON.

    Raises:
        click.BadParameter: a pair without ``=``.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def parse_fit_config(pairs: tuple[str, ...]) -> dict[str, Scalar]:
    """``KEY=VALUE`` pairs as a fit config: like ``parse_options``, each value a scalar.

    Raises:
        click.BadParameter: a pair without ``=``, or a value that is not a bool, int, float
            or string (a list, an object, null).
    """
    config = parse_options(pairs)
    for key, value in config.items():
        if not isinstance(value, bool | int | float | str):
            raise click.BadParameter(f"fit config {key}={value!r} is not a scalar")
    return config


option_flag = click.option(
    "--option",
    "-o",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="A [plugin.options] entry (VALUE read as JSON when it parses); repeatable.",
)


@click.group()
def plugin() -> None:
    """Plugins in the ``fedbus.plugins`` entry-point group."""


@plugin.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per plugin.")
def plugin_list(as_json: bool) -> None:
    """List installed plugins: version, entry point, options and their defaults."""
    from agent.errors import PluginError
    from agent.plugin.loader import available_plugins, describe_plugin

    found = available_plugins()
    if not found:
        click.echo("no plugins installed (entry-point group fedbus.plugins)")
    for name in sorted(found):
        try:
            d = describe_plugin(name)
        except PluginError as exc:
            click.echo(f"{name}\tbroken: {exc}")
            continue
        record = {
            "name": d.name,
            "distribution": d.distribution,
            "version": d.version,
            "entry_point": d.entry_point,
            "summary": d.info.summary,
            "options": dict(d.info.options),
            "fit_config": dict(d.info.fit_config),
            "datasets": list(d.info.datasets),
            "models": list(d.info.models),
            "exports": list(d.info.exports),
        }
        if as_json:
            click.echo(json.dumps(record, sort_keys=True))
            continue
        click.echo(f"{d.name} {d.version}  ({d.distribution}: {d.entry_point})")
        for key in ("summary", "options", "fit_config", "datasets", "models", "exports"):
            value = record[key]
            if value:
                shown = value if isinstance(value, str) else json.dumps(value)
                click.echo(f"    {key + ':':<12} {shown}")


@plugin.command("new")
@click.argument("name")
@click.option(
    "--dir",
    "parent",
    default=Path("."),
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to create the NAME folder.",
)
def plugin_new(name: str, parent: Path) -> None:
    """Write a new plugin project NAME that installs and passes its tests as generated."""
    from agent.plugin.scaffold import new_plugin

    root = new_plugin(name, parent)
    click.echo(f"created {root}/ (plugin {name!r}); next:")
    click.echo(f"  pip install ./{root}   # or -e while you edit it")
    click.echo(f"  fedbus plugin check {name}")
    click.echo(f"  fedbus demo --plugin {name} --agents 3 --rounds 5")


@plugin.command("check")
@click.argument("target")
@option_flag
@click.option(
    "--config",
    "-c",
    "fit_config",
    multiple=True,
    metavar="KEY=VALUE",
    help="A fit config entry (e.g. epochs=1); repeatable.",
)
@click.option(
    "--max-payload",
    default=None,
    type=click.IntRange(min=1024),
    help="The agents' max_payload in bytes (default: a default config's, 8 MiB): the model "
    "size check says which messages exceed it.",
)
def plugin_check(
    target: str, options: tuple[str, ...], fit_config: tuple[str, ...], max_payload: int | None
) -> None:
    """Run the conformance suite on installed plugin TARGET, or on the plugin project in
    folder TARGET: what it returns, and the model's size and traffic per round per agent.
    Prints a report; exits 1 when a check fails."""
    from agent.logs import configure_logging
    from agent.plugin.check import check_path, check_plugin
    from agent.plugin.loader import available_plugins

    configure_logging(level="warning", fmt="console", stream=sys.stderr)
    kwargs: dict[str, Any] = {"options": parse_options(options)}
    if max_payload is not None:
        kwargs["max_payload"] = max_payload
    if fit_config:
        kwargs["fit_config"] = parse_fit_config(fit_config)
    path = Path(target)
    if target in available_plugins() or not path.is_dir():
        reports = [check_plugin(target, **kwargs)]
    else:
        reports = check_path(path, **kwargs)
    for report in reports:
        click.echo(report.render())
    if not all(r.passed for r in reports):
        sys.exit(1)


@plugin.command("export")
@click.argument("name")
@click.argument("weights", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@option_flag
def plugin_export(name: str, weights: Path, output: Path, options: tuple[str, ...]) -> None:
    """Export WEIGHTS (an .npz such as a state dir's global_model.npz) with plugin NAME's
    export hook (ONNX for digits-mlp) to OUTPUT."""
    from agent.errors import PluginError
    from agent.plugin.api import PluginContext
    from agent.plugin.loader import describe_plugin, load_plugin
    from agent.state import read_weights

    given = parse_options(options)
    info = describe_plugin(name).info
    if info.takes("num_agents") and "num_agents" not in given:
        given = {"agent_index": 0, "num_agents": 1, **given}
    loaded = load_plugin(name, PluginContext("export", given))
    written = loaded.export(read_weights(weights), output)
    if written is None:
        raise PluginError(f"plugin {name!r} has no export hook")
    click.echo(f"wrote {written}")
