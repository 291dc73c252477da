"""Task helpers (agent.runtime.tasks): a write in a worker thread that a stop interrupts is
waited for before the cancellation goes on."""

from __future__ import annotations

import asyncio
import threading

import pytest

from agent.runtime.tasks import finish_in_thread

pytestmark = pytest.mark.timeout(30)


async def test_a_cancelled_thread_write_is_finished_before_the_cancel_is_raised() -> None:
    """The peer saves each step this way: before, a stop returned while the save went on in
    its thread, and the restarted peer read the step before (``test_p2p``, once in a soak)."""
    entered, release = threading.Event(), threading.Event()
    written: list[int] = []

    def write(value: int) -> None:
        entered.set()
        release.wait(10)
        written.append(value)

    task = asyncio.create_task(finish_in_thread(write, 3))
    await asyncio.to_thread(entered.wait, 10)
    task.cancel()
    await asyncio.sleep(0.05)
    assert not task.done()  # still waiting for the write
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert written == [3]


async def test_an_uncancelled_thread_write_returns_when_done() -> None:
    written: list[str] = []
    await finish_in_thread(written.append, "x")
    assert written == ["x"]
