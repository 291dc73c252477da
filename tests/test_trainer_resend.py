"""``roles.trainer.resend``: a trainer re-publishes its recent messages when, and only when,
the aggregator incarnation it follows says its bus reconnected again."""

from __future__ import annotations

import asyncio

from agent.messages.bodies import FederationStatus, RoundPhase
from agent.roles.trainer.resend import AggregatorReconnects


class Replaying:
    """A bus that counts ``replay_recent`` calls (the rest of ``Bus`` is never used)."""

    def __init__(self) -> None:
        self.replays = 0

    async def replay_recent(self) -> bool:
        self.replays += 1
        return True


def status(incarnation: str, reconnects: int) -> FederationStatus:
    return FederationStatus(
        round=1,
        phase=RoundPhase.TRAINING,
        detail="training",
        agents={},
        incarnation=incarnation,
        reconnects=reconnects,
    )


async def test_a_rise_of_the_followed_incarnation_resends_once() -> None:
    bus = Replaying()
    watch = AggregatorReconnects(bus)  # type: ignore[arg-type]
    task = asyncio.create_task(watch.run())
    try:
        watch.saw(status("a", 2))  # first seen: only the count
        watch.saw(status("a", 2))
        watch.saw(status("a", 1))  # an older copy, replayed
        await asyncio.sleep(0.01)
        assert bus.replays == 0
        watch.saw(status("a", 3))
        await asyncio.sleep(0.01)
        assert bus.replays == 1
        watch.saw(status("b", 7))  # a new incarnation: the trainer rejoins it instead
        await asyncio.sleep(0.01)
        assert bus.replays == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
