"""Transports: the ``Bus`` protocol and its MQTT, NATS and in-memory adapters.

The adapters are imported lazily (aiomqtt and nats-py together take ~0.1 s to import), so
``from agent.bus import BusSettings`` stays cheap for the CLI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from agent.bus.base import Bus, BusMessage, BusSettings, ConnectCallback, LastWill

if TYPE_CHECKING:
    from agent.bus.memory import MemoryBroker, MemoryBus
    from agent.bus.mqtt import MqttBus
    from agent.bus.nats_bus import NatsBus
    from agent.bus.url import TlsFiles, bus_from_url

_LAZY = {
    "MemoryBroker": "agent.bus.memory",
    "MemoryBus": "agent.bus.memory",
    "MqttBus": "agent.bus.mqtt",
    "NatsBus": "agent.bus.nats_bus",
    "TlsFiles": "agent.bus.url",
    "bus_from_url": "agent.bus.url",
}

__all__ = [
    "Bus",
    "BusMessage",
    "BusSettings",
    "ConnectCallback",
    "LastWill",
    "MemoryBroker",
    "MemoryBus",
    "MqttBus",
    "NatsBus",
    "TlsFiles",
    "bus_from_url",
]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
