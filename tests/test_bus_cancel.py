"""A bus stays healthy when publishes are cancelled mid-acknowledgement (a regression test:
nats-py's read loop used to die on the PONG of a cancelled flush)."""

from __future__ import annotations

import asyncio
import contextlib
import random

import pytest

from agent.brokers import EmbeddedBroker
from agent.bus.base import BusSettings
from agent.bus.session import Deliver, Session
from agent.bus.supervisor import SupervisedBus
from agent.bus.url import bus_from_url
from agent.errors import TransportError

pytestmark = pytest.mark.timeout(60)


@pytest.mark.broker
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


class _SwallowsCancel(SupervisedBus):
    """A bus whose connect attempts are refused, and which turns a cancellation that lands in
    one into a refusal, as nats-py does when the cancel arrives inside its close()."""

    def __init__(self, settings: BusSettings) -> None:
        super().__init__(settings)
        self.attempts = 0

    async def _open_session(self, deliver: Deliver) -> Session:
        self.attempts += 1
        with contextlib.suppress(asyncio.CancelledError):  # swallowed
            await asyncio.sleep(0.05)
        raise TransportError("refused")


@pytest.mark.timeout(20)
async def test_a_bus_closes_when_its_adapter_swallows_the_cancellation() -> None:
    """Leaving the bus ends its supervisor even if the adapter swallowed the cancel: before,
    the supervisor went on reconnecting and ``__aexit__`` waited for ever (a NATS broker test
    hung in about 1 run in 6 under load)."""
    settings = BusSettings(client_id="c", backoff_initial=0.01, backoff_max=0.02)
    bus = _SwallowsCancel(settings)
    async with bus:
        while bus.attempts < 3:
            await asyncio.sleep(0.01)
    after = bus.attempts
    await asyncio.sleep(0.2)
    assert bus.attempts == after  # no attempt after the close
