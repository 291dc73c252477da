"""Admission answers a join once while its answer (join_accepted, then a model that may take
seconds as chunks) is still going out: the joins a trainer repeats meanwhile are duplicates."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import numpy as np

from agent.messages.bodies import GlobalModel, JoinRequest
from agent.messages.envelope import Message, new_envelope
from agent.messages.kinds import Kind
from agent.roles.aggregator.admission import Admission
from agent.roles.aggregator.records import GlobalState


class SlowOutbox:
    """Records what is sent; a model takes ``model_seconds`` to go out."""

    def __init__(self, model_seconds: float) -> None:
        self.sent: list[str] = []
        self._model_seconds = model_seconds

    async def try_send(self, spec: Any, body: Any, **_: Any) -> int:
        self.sent.append(type(body).__name__)
        if isinstance(body, GlobalModel):
            await asyncio.sleep(self._model_seconds)
        return 1


def join(agent: str, attempt: str = "", at: float | None = None) -> Message[JoinRequest]:
    body = JoinRequest(
        agent_id=agent, plugin="p", num_examples=1, capabilities=["fedavg"], attempt=attempt
    )
    envelope = new_envelope(kind=Kind.JOIN, federation="f", round=0, sender=agent, body=b"")
    if at is not None:
        envelope = msgspec.structs.replace(envelope, timestamp=at)
    return Message(envelope=envelope, body=body, topic="fl/f/join")


def admission_of(outbox: Any, rejoin_interval: float) -> Admission:
    state = GlobalState.of(0, [np.zeros(4, np.float32)])
    return Admission(
        outbox=outbox,
        plugin_name="p",
        wanted=1,
        seal_key=None,
        current=lambda: (0, state),
        rejoin_interval=rejoin_interval,
    )


async def test_joins_repeated_while_the_model_goes_out_get_no_second_model() -> None:
    outbox = SlowOutbox(model_seconds=0.5)
    admission = admission_of(outbox, rejoin_interval=0.2)
    first = asyncio.create_task(admission.on_join(join("a")))
    for _ in range(4):  # a join loop retrying faster than the model arrives
        await asyncio.sleep(0.15)
        await admission.on_join(join("a"))
    await first
    assert outbox.sent == ["JoinAccepted", "GlobalModel"]
    assert admission.duplicates["a"] == 4


async def test_joins_of_an_earlier_attempt_replayed_after_a_fresh_one_are_duplicates() -> None:
    """A NATS bus re-publishes an agent's recent joins after a reconnect while the agent joins
    afresh: the replayed attempts, built before the fresh one, get no answer (each had been a
    second and third admission with a model); a newer attempt later is answered as before."""
    outbox = SlowOutbox(model_seconds=0.0)
    admission = admission_of(outbox, rejoin_interval=0.3)
    await admission.on_join(join("a", "1111111111111111", at=100.0))  # before the reconnect
    await admission.on_join(join("a", "3333333333333333", at=110.0))  # joined afresh
    await admission.on_join(join("a", "1111111111111111", at=100.0))  # replays of old attempts
    await admission.on_join(join("a", "2222222222222222", at=105.0))
    assert outbox.sent == ["JoinAccepted", "GlobalModel"] * 2
    assert admission.duplicates["a"] == 2
    await asyncio.sleep(0.35)  # past the window: a new attempt (a restart) is admitted
    await admission.on_join(join("a", "4444444444444444", at=120.0))
    assert outbox.sent[-2:] == ["JoinAccepted", "GlobalModel"]
