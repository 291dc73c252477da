"""Plugins straight from a project folder, before they are installed.

``fedbus plugin check PATH`` reads ``PATH/pyproject.toml``, finds its
``[project.entry-points."fedbus.plugins"]`` table and imports each ``module:attribute`` with
``PATH`` (and ``PATH/src``, for the src layout) first on ``sys.path``.
"""

from __future__ import annotations

import importlib
import sys
import tomllib
from pathlib import Path

from agent.errors import PluginError
from agent.plugin.api import ENTRY_POINT_GROUP
from agent.plugin.loader import Factory


def entry_points_in_project(path: Path) -> dict[str, str]:
    """The ``fedbus.plugins`` entry points that ``path/pyproject.toml`` declares.

    Raises:
        PluginError: no readable ``pyproject.toml``, or no entry point in the group.
    """
    pyproject = path / "pyproject.toml"
    try:
        with pyproject.open("rb") as f:
            meta = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PluginError(f"cannot read {pyproject}: {exc}") from exc
    table = meta.get("project", {}).get("entry-points", {}).get(ENTRY_POINT_GROUP, {})
    if not isinstance(table, dict) or not table:
        raise PluginError(f'{pyproject} has no [project.entry-points."{ENTRY_POINT_GROUP}"]')
    return {str(k): str(v) for k, v in table.items()}


def import_factory(spec: str, *, roots: list[Path]) -> Factory:
    """Import ``module:attribute`` with ``roots`` first on ``sys.path``.

    Raises:
        PluginError: a malformed spec, or the import failed.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise PluginError(f"entry point {spec!r} is not of the form module:attribute")
    for root in reversed(roots):
        if root.is_dir() and str(root) not in sys.path:
            sys.path.insert(0, str(root))
    try:
        obj: object = importlib.import_module(module_name.strip())
        for part in attribute.strip().split("."):
            obj = getattr(obj, part)
    except Exception as exc:
        raise PluginError(f"cannot import {spec!r}: {exc!r}") from exc
    if not callable(obj):
        raise PluginError(f"entry point {spec!r} is not callable")
    return obj


def factories_in_project(path: Path) -> dict[str, Factory]:
    """Every plugin factory the project at ``path`` declares, by entry-point name.

    Raises:
        PluginError: as ``entry_points_in_project`` and ``import_factory``.
    """
    root = path.resolve()
    specs = entry_points_in_project(root)
    return {name: import_factory(spec, roots=[root, root / "src"]) for name, spec in specs.items()}
