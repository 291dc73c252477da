"""A bus stays healthy when publishes are cancelled mid-acknowledgement (a regression test:
nats-py's read loop used to die on the PONG of a cancelled flush)."""

from __future__ import annotations

import asyncio
import random

import pytest

from agent.brokers import EmbeddedBroker
from agent.bus.base import BusSettings
from agent.bus.url import bus_from_url

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]


async def test_cancelled_publishes_do_not_deafen_the_connection(
    broker: EmbeddedBroker,
) -> None:
    """Publishes cancelled while waiting for their acknowledgement (as the runtime does when
    work is superseded or a deadline passes) leave the connection able to receive and to
    publish."""
    rng = random.Random(1)
    settings = BusSettings(client_id="listener", publish_timeout=2.0)
    async with (
        bus_from_url(broker.url, settings) as bus,
        bus_from_url(broker.url, BusSettings(client_id="talker")) as talker,
    ):
        await bus.subscribe("t/in")
        await bus.wait_connected(timeout=10)
        await talker.wait_connected(timeout=10)
        for _ in range(60):
            task = asyncio.create_task(bus.publish("t/out", b"x" * 1000))
            await asyncio.sleep(rng.uniform(0, 0.002))
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0.2)  # let the late PONGs arrive
        messages = bus.messages()
        for i in range(3):
            await talker.publish("t/in", str(i).encode())
            async with asyncio.timeout(3):
                got = await anext(messages)
            assert got.payload == str(i).encode()
        await bus.publish("t/out", b"still fine")  # a flush still completes
