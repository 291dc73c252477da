"""``fedbus plugin new NAME``: a plugin project that installs and passes its tests as written.

The files come from ``agent/plugin/template/*.tmpl`` (``string.Template``, ``${name}``
placeholders)::

    NAME/
      pyproject.toml          the fedbus.plugins entry point NAME = "MODULE.plugin:create"
      README.md               how to install, check, run, and what the options are
      MODULE/__init__.py
      MODULE/plugin.py        the Plugin: softmax regression on synthetic data, with describe()
      tests/test_plugin.py    the conformance suite and a training test

``MODULE`` is NAME with ``-`` turned into ``_``; the distribution is ``fedbus-NAME``.
"""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path
from string import Template

from agent.errors import PluginError

#: A plugin name that is also a valid entry-point name and (with ``-`` → ``_``) module name.
NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")

#: template file → path in the generated project (``MODULE`` replaced).
_FILES = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "README.md.tmpl": "README.md",
    "init.py.tmpl": "MODULE/__init__.py",
    "plugin.py.tmpl": "MODULE/plugin.py",
    "test_plugin.py.tmpl": "tests/test_plugin.py",
}


def placeholders(name: str) -> dict[str, str]:
    """The template values for plugin ``name``.

    Raises:
        PluginError: ``name`` does not match ``NAME_PATTERN``.
    """
    if not NAME_PATTERN.match(name):
        raise PluginError(
            f"plugin name {name!r} must start with a letter and have 1-64 of [A-Za-z0-9_-]"
        )
    module = name.replace("-", "_").lower()
    cls = "".join(part.capitalize() for part in re.split(r"[-_]", name) if part) + "Plugin"
    return {
        "name": name,
        "module": module,
        "distribution": f"fedbus-{name.lower()}",
        "cls": cls,
        "summary": "softmax regression on synthetic Gaussian blobs (a template to edit)",
    }


def new_plugin(name: str, parent: Path) -> Path:
    """Write the project for plugin ``name`` into ``parent / name``; return that folder.

    Raises:
        PluginError: a bad name, or ``parent / name`` exists and is not an empty folder.
    """
    values = placeholders(name)
    root = parent / name
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise PluginError(f"{root} already exists and is not empty")
    template = files("agent.plugin").joinpath("template")
    for source, target in _FILES.items():
        text = Template(template.joinpath(source).read_text(encoding="utf-8")).substitute(values)
        path = root / target.replace("MODULE", values["module"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root
