"""Connection admission (``agent.bus.admission``): the connects of a fleet process go through
one gate, a bounded number at a time; a device's connect is not gated."""

from __future__ import annotations

import asyncio

import pytest

from agent.bus.admission import ConnectGate, admitted, use_gate
from agent.bus.base import BusSettings
from agent.bus.session import Deliver, Session
from agent.bus.supervisor import SupervisedBus
from agent.errors import TransportError


class Refused(SupervisedBus):
    """A bus whose every connect takes a while, then fails (the supervisor retries)."""

    def __init__(self, settings: BusSettings, seen: dict[str, int]) -> None:
        super().__init__(settings)
        self.seen = seen

    async def _open_session(self, deliver: Deliver) -> Session:
        self.seen["now"] += 1
        self.seen["most"] = max(self.seen["most"], self.seen["now"])
        try:
            await asyncio.sleep(0.02)
        finally:
            self.seen["now"] -= 1
            self.seen["attempts"] += 1
        raise TransportError("refused")


async def _attempts(gate: ConnectGate | None, buses: int, attempts: int) -> dict[str, int]:
    seen = {"now": 0, "most": 0, "attempts": 0}
    settings = [
        BusSettings(client_id=f"c{i}", backoff_initial=0.001, backoff_max=0.002)
        for i in range(buses)
    ]

    async def run() -> None:
        for s in settings:
            await stack.enter_async_context(Refused(s, seen))
        while seen["attempts"] < attempts:
            await asyncio.sleep(0.01)

    from contextlib import AsyncExitStack

    async with AsyncExitStack() as stack:
        if gate is None:
            await run()
        else:
            with use_gate(gate):
                await run()
    return seen


async def test_a_gate_bounds_the_connects_in_flight_and_every_bus_still_retries() -> None:
    seen = await _attempts(ConnectGate(3, jitter=0.001), buses=12, attempts=36)
    assert seen["most"] <= 3
    assert seen["attempts"] >= 36


async def test_without_a_gate_a_connect_waits_for_nothing() -> None:
    seen = await _attempts(None, buses=12, attempts=12)
    assert seen["most"] > 3  # 12 buses connecting at once


async def test_a_slot_is_released_however_the_attempt_ends() -> None:
    gate = ConnectGate(1, jitter=0)
    with use_gate(gate):
        with pytest.raises(TimeoutError):
            async with admitted(), asyncio.timeout(0.01):
                await asyncio.sleep(1)
        async with asyncio.timeout(1):
            async with admitted():
                assert gate.active == 1
    assert (gate.active, gate.waiting) == (0, 0)


def test_a_gate_needs_a_slot() -> None:
    with pytest.raises(ValueError, match="limit"):
        ConnectGate(0)
