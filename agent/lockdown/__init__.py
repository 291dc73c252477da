"""Broker lockdown: TLS with client certificates and per-identity access, for mosquitto and
nats-server, generated per federation (``fedbus broker-config``; ARCHITECTURE.md §6).

- :mod:`~agent.lockdown.access`: who may publish and subscribe where (from the topic table).
- :mod:`~agent.lockdown.members`: who the broker admits (aggregator, trainers, revoked).
- :mod:`~agent.lockdown.mosquitto`, :mod:`~agent.lockdown.nats`: the two renderers.
- :mod:`~agent.lockdown.files`: write a broker directory, regenerate it, reload the broker.
- :mod:`~agent.lockdown.nats_cluster`, :mod:`~agent.lockdown.topology`: a NATS cluster's
  routes and leaf-node listener, a site's leaf node, and their directories.
- :mod:`~agent.lockdown.templates`: the documented templates in ``broker_config/``.
"""

from __future__ import annotations

from agent.lockdown.access import ENROLL_IDENTITY
from agent.lockdown.files import (
    BrokerFiles,
    embedded_broker,
    local_mosquitto_user,
    regenerate,
    reload,
    write_broker_config,
)
from agent.lockdown.members import Members, members_from_registry

__all__ = [
    "ENROLL_IDENTITY",
    "BrokerFiles",
    "Members",
    "embedded_broker",
    "local_mosquitto_user",
    "members_from_registry",
    "regenerate",
    "reload",
    "write_broker_config",
]
