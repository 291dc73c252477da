"""An intermittently connected device: ``[simulate] duty_cycle`` (``fedbus demo --duty-cycle``).

``duty_cycled`` runs a node's connected life for ``duty_cycle x period`` seconds of every
``period``, and is offline (its work cancelled, its bus connection closed after a clean
``offline`` status) for the rest, as a phone that is only on Wi-Fi some of the day.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from agent.p2p_settings import SimulateConfig

log = structlog.get_logger(__name__)


def schedule(settings: SimulateConfig) -> tuple[float, float, float]:
    """(online seconds per period, offline seconds, seconds into the cycle at start)."""
    online = settings.duty_cycle * settings.period
    return online, settings.period - online, settings.phase % settings.period


async def duty_cycled(run: Callable[[], Awaitable[None]], settings: SimulateConfig) -> None:
    """Await ``run()`` (a fresh connection each time) while online, cancel it when an
    online window ends, wait out the offline window, repeat; returns when ``run()`` returns
    by itself. With ``duty_cycle = 1`` it is ``await run()``."""
    if settings.duty_cycle >= 1:
        await run()
        return
    online, offline, into = schedule(settings)
    while True:
        if into < online:
            window = asyncio.timeout(online - into)
            try:
                async with window:
                    await run()
            except TimeoutError:
                if not window.expired():
                    raise
            else:
                return
            into = online
        log.info("duty_cycle_offline", seconds=round(offline - (into - online), 3))
        await asyncio.sleep(offline - (into - online))
        into = 0.0
        log.info("duty_cycle_online", seconds=round(online, 3))
