"""The documented templates in ``broker_config/``, generated from the renderers (one source).

The renderers in :mod:`agent.lockdown.mosquitto` and :mod:`agent.lockdown.nats` are the
source of truth; ``broker_config/secure-*.template`` are what they produce for placeholder
values, so an operator can read (or ``sed``) them without running fedbus.
``tests/test_broker_lockdown.py`` keeps the shipped files equal to :func:`render_templates`;
after changing a renderer, rewrite them with ``python -m agent.lockdown.templates``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from agent.lockdown import mosquitto, nats

#: Placeholders, replaced by plain text substitution.
PLACEHOLDERS: dict[str, str] = {
    "@FEDERATION@": "the federation id (the CA certificate's O)",
    "@AGGREGATOR@": "the aggregator's agent id (its certificate's CN)",
    "@AGENT@": "an enrolled trainer's agent id (nats: one users entry per trainer)",
    "@HOST@": "the listen address, e.g. 127.0.0.1",
    "@PORT@": "the listen port (mosquitto 8883, nats 4222 by convention)",
    "@DIR@": "the absolute directory holding ca.pem, server.pem, server.key (and crl.pem, "
    "mosquitto.acl)",
}

_HEADER = "# TEMPLATE (see broker_config/README.md): replace {names}.\n"


def render_templates() -> dict[str, str]:
    """File name in ``broker_config/`` → its text."""
    listen = {"host": "@HOST@", "port": "@PORT@", "directory": "@DIR@"}
    conf = mosquitto.render_conf(**listen)
    acl = mosquitto.render_acl("@FEDERATION@", aggregator="@AGGREGATOR@")
    nats_conf = nats.render_conf(
        "@FEDERATION@",
        aggregator="@AGGREGATOR@",
        agents=["@AGENT@"],
        host="@HOST@",
        port="@PORT@",
        directory="@DIR@",
    )
    listener = "@HOST@, @PORT@ and @DIR@"
    return {
        "secure-mosquitto.conf.template": _HEADER.format(names=listener) + conf,
        "secure-mosquitto.acl.template": _HEADER.format(names="@FEDERATION@ and @AGGREGATOR@")
        + acl,
        "secure-nats-server.conf.template": _HEADER.format(
            names=f"@FEDERATION@, @AGGREGATOR@, @AGENT@,\n# {listener}"
        )
        + nats_conf,
    }


def write_templates(directory: Path) -> list[Path]:
    """Write every template into ``directory``; returns the paths."""
    paths = []
    for name, text in render_templates().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parents[2] / "broker_config"
    for written in write_templates(target):
        print(written)
