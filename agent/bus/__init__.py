"""Transports: the ``Bus`` protocol and its MQTT, NATS and in-memory adapters."""

from agent.bus.base import Bus, BusMessage, BusSettings, ConnectCallback, LastWill

__all__ = ["Bus", "BusMessage", "BusSettings", "ConnectCallback", "LastWill"]
