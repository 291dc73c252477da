"""The MQTT keepalive check runs every quarter keepalive (``agent.bus.mqtt_keepalive``): paho's
``loop_misc`` is called at that cadence while it succeeds, and the loop ends with the
connection. (A real idle mosquitto session with keepalive 8 s stays up past 1.5 x keepalive
on these checks alone: ``bench/agent_footprint.py`` runs idle trainers for longer.)"""

from __future__ import annotations

import asyncio

import aiomqtt
import paho.mqtt.client as paho
import pytest

from agent.bus import mqtt_keepalive
from agent.bus.mqtt_keepalive import tick_per_keepalive

pytestmark = pytest.mark.timeout(30)


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
