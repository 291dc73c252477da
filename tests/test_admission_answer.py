"""Admission answers a join once while its answer (join_accepted, then a model that may take
seconds as chunks) is still going out: the joins a trainer repeats meanwhile are duplicates."""

from __future__ import annotations

import asyncio
from typing import Any

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


def join(agent: str) -> Message[JoinRequest]:
    body = JoinRequest(agent_id=agent, plugin="p", num_examples=1, capabilities=["fedavg"])
    envelope = new_envelope(kind=Kind.JOIN, federation="f", round=0, sender=agent, body=b"")
    return Message(envelope=envelope, body=body, topic="fl/f/join")


async def test_joins_repeated_while_the_model_goes_out_get_no_second_model() -> None:
    outbox = SlowOutbox(model_seconds=0.5)
    state = GlobalState.of(0, [np.zeros(4, np.float32)])
    admission = Admission(
        outbox=outbox,  # type: ignore[arg-type]
        plugin_name="p",
        wanted=1,
        seal_key=None,
        current=lambda: (0, state),
        rejoin_interval=0.2,
    )
    first = asyncio.create_task(admission.on_join(join("a")))
    for _ in range(4):  # a join loop retrying faster than the model arrives
        await asyncio.sleep(0.15)
        await admission.on_join(join("a"))
    await first
    assert outbox.sent == ["JoinAccepted", "GlobalModel"]
    assert admission.duplicates["a"] == 4
