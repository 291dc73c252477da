"""The MQTT keepalive check runs every quarter keepalive (``agent.bus.mqtt_keepalive``): paho's
``loop_misc`` is called at that cadence while it succeeds, the loop ends with the connection,
and a real idle mosquitto session outlives the broker's 1.5 x keepalive on those checks alone
(mosquitto drops it at about 1.5 x keepalive when no PINGREQ comes)."""

from __future__ import annotations

import asyncio

import aiomqtt
import paho.mqtt.client as paho
import pytest

from agent.brokers import EmbeddedBroker
from agent.bus import mqtt_keepalive
from agent.bus.base import BusSettings
from agent.bus.mqtt_keepalive import tick_per_keepalive
from agent.bus.url import bus_from_url

pytestmark = pytest.mark.timeout(45)


@pytest.mark.parametrize(("keepalive", "every"), [(40, 10.0), (2, 1.0)])
async def test_loop_misc_runs_every_quarter_keepalive_until_the_connection_ends(
    monkeypatch: pytest.MonkeyPatch, keepalive: int, every: float
) -> None:
    """Every keepalive / 4 s, never more often than aiomqtt's own 1 s."""
    client = aiomqtt.Client("127.0.0.1", 1, keepalive=keepalive)
    codes = [paho.MQTT_ERR_SUCCESS] * 3 + [paho.MQTT_ERR_NO_CONN]
    monkeypatch.setattr(client._client, "loop_misc", lambda: codes.pop(0))
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(mqtt_keepalive.asyncio, "sleep", sleep)
    tick_per_keepalive(client, keepalive)
    await asyncio.wait_for(client._misc_loop(), 5)
    assert slept == [every] * 3
    assert codes == []


async def test_no_keepalive_keeps_aiomqtts_own_loop() -> None:
    client = aiomqtt.Client("127.0.0.1", 1, keepalive=0)
    own = client._misc_loop
    tick_per_keepalive(client, 0)
    assert client._misc_loop == own


@pytest.mark.broker
async def test_an_idle_session_stays_up_on_the_quarter_keepalive_checks(
    mosquitto: EmbeddedBroker,
) -> None:
    """keepalive 6 s, checked every 1.5 s: 16 s of silence (mosquitto drops a silent client after
    9 to 13 s) and no reconnect."""
    bus = bus_from_url(mosquitto.url, BusSettings(client_id="keepalive-idle", keepalive=6))
    connects: list[bool] = []

    async def on_connect(reconnect: bool) -> None:
        connects.append(reconnect)

    bus.on_connect(on_connect)
    async with bus:
        await bus.subscribe("keepalive/#")
        await asyncio.sleep(16)
        await bus.publish("keepalive/x", b"still here")
    assert connects == [False]
