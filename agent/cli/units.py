"""The systemd units ``fedbus service install`` installs: where they live, the paths of one
``fedbus-ROLE@FED`` service, and rendering a shipped template for an install.

For ROLE ``agent`` (a trainer) or ``aggregator`` and federation FED::

    /etc/fedbus/FED/            0700, root's alone (ConfigurationDirectory=)
        ROLE.toml               the config; systemd passes it as the credential ROLE.toml
        ROLE.key                the private key (0600); passed as the credential ROLE.key
    /var/lib/fedbus/FED/ROLE/   the state (StateDirectory=; owned by the dynamic user)

The service reads both from ``$CREDENTIALS_DIRECTORY``, which for a system service is
``/run/credentials/fedbus-ROLE@FED.service``: a path fixed per unit, so the config can name
the key there (``key_file`` under ``[identity]``, and ``[tls]`` for TLS URLs) and no agent
code needs to know about systemd.
"""

from __future__ import annotations

import re
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.atomic import PUBLIC, write_text
from agent.errors import ConfigError
from agent.role import Role

#: Where the unit templates are: ``systemd/`` beside the ``agent`` package in a checkout
#: (and editable installs), ``<prefix>/share/fedbus/systemd`` in a wheel install
#: (``[tool.setuptools.data-files]`` in pyproject.toml), as ``agent.brokers.CONFIG_DIRS``.
UNIT_DIRS = (
    Path(__file__).resolve().parents[2] / "systemd",
    Path(sysconfig.get_path("data")) / "share" / "fedbus" / "systemd",
)
#: The role each unit runs, by the word the units (and ``--role``) name it with.
UNIT_ROLES = {"agent": Role.TRAINER, "aggregator": Role.AGGREGATOR}
#: What the shipped units say, and ``install`` replaces.
TEMPLATE_FEDBUS = "/opt/fedbus/venv/bin/fedbus"
TEMPLATE_CONFIG_ROOT = "%E/fedbus/"
DEFAULT_UNIT_DIR = Path("/etc/systemd/system")
DEFAULT_CONFIG_ROOT = Path("/etc/fedbus")
#: StateDirectory=fedbus/%i/ROLE; with DynamicUser= the data lives under private/ and
#: /var/lib/fedbus is a symlink farm, so ``fedbus enroll`` may have resolved into it.
STATE_ROOT = Path("/var/lib/fedbus")
PRIVATE_STATE_ROOT = Path("/var/lib/private/fedbus")
CREDENTIALS_ROOT = Path("/run/credentials")
#: ProtectHome=yes hides these from the service.
HOME_DIRS = (Path("/home"), Path("/root"), Path("/run/user"))
#: Characters a path may have to go into a unit file unquoted (% is escaped as %%).
_UNIT_PATH_RE = re.compile(r"^/[A-Za-z0-9._+/@:%-]*$")

Echo = Callable[[str], None]


def unit_name(role: Role) -> str:
    """The word the units name ``role`` with (``agent`` for a trainer).

    Raises:
        ValueError: ``role`` runs no unit (enroll, broker).
    """
    for name, unit_role in UNIT_ROLES.items():
        if unit_role is role:
            return name
    raise ValueError(f"no fedbus unit runs the {role} role")


@dataclass(frozen=True, slots=True)
class Layout:
    """Where everything of one ``fedbus-ROLE@FED`` service lives."""

    role: Role
    federation: str
    config_root: Path = DEFAULT_CONFIG_ROOT

    @property
    def name(self) -> str:
        """The role's word in the unit's names: ``agent`` (a trainer) or ``aggregator``."""
        return unit_name(self.role)

    @property
    def template(self) -> str:
        return f"fedbus-{self.name}@.service"

    @property
    def unit(self) -> str:
        return f"fedbus-{self.name}@{self.federation}.service"

    @property
    def config_dir(self) -> Path:
        return self.config_root / self.federation

    @property
    def config_path(self) -> Path:
        return self.config_dir / f"{self.name}.toml"

    @property
    def key_path(self) -> Path:
        return self.config_dir / f"{self.name}.key"

    @property
    def state_dir(self) -> Path:
        return STATE_ROOT / self.federation / self.name

    @property
    def credential_key(self) -> Path:
        """The key's path as the running service sees it."""
        return CREDENTIALS_ROOT / self.unit / f"{self.name}.key"


def find_template(role: Role) -> Path:
    """The shipped ``fedbus-agent@.service`` (``Role.TRAINER``) or
    ``fedbus-aggregator@.service``.

    Raises:
        ConfigError: in none of ``UNIT_DIRS`` (a broken install).
    """
    name = f"fedbus-{unit_name(role)}@.service"
    for directory in UNIT_DIRS:
        if (directory / name).is_file():
            return directory / name
    raise ConfigError(f"no {name} in {' or '.join(map(str, UNIT_DIRS))}: reinstall fedbus")


def unit_path(path: Path, what: str) -> str:
    """``path`` written for a unit file (absolute, % escaped).

    Raises:
        ConfigError: relative, or with characters a unit file would need quoted.
    """
    text = str(path)
    if not _UNIT_PATH_RE.match(text):
        raise ConfigError(f"{what} {text!r} must be absolute, without spaces, quotes or $")
    return text.replace("%", "%%")


def render_unit(template: str, *, fedbus: Path, config_root: Path) -> str:
    """The shipped unit with ``ExecStart`` running ``fedbus`` and, when it is not
    /etc/fedbus, the config directories under ``config_root``."""
    if TEMPLATE_FEDBUS not in template or TEMPLATE_CONFIG_ROOT not in template:
        raise ConfigError(f"the unit template no longer names {TEMPLATE_FEDBUS}: reinstall")
    text = template.replace(TEMPLATE_FEDBUS, unit_path(fedbus, "--prefix"))
    if config_root != DEFAULT_CONFIG_ROOT:
        text = text.replace(TEMPLATE_CONFIG_ROOT, unit_path(config_root, "--config-dir") + "/")
    return text


def write_unit(layout: Layout, *, fedbus: Path, unit_dir: Path, echo: Echo) -> None:
    """Render the template into ``unit_dir`` (atomically; untouched when up to date)."""
    text = find_template(layout.role).read_text()
    unit = render_unit(text, fedbus=fedbus, config_root=layout.config_root)
    target = unit_dir / layout.template
    if target.is_file() and target.read_text() == unit:
        echo(f"{target} is up to date (runs {fedbus})")
        return
    write_text(target, unit, mode=PUBLIC)
    echo(f"wrote {target} (runs {fedbus})")
