"""``InboxReplay``: what the aggregator resends to a rejoining trainer's inbox on NATS."""

from __future__ import annotations

from typing import Any, cast

from agent.bus.base import Bus
from agent.messages.bodies import FitIns, GlobalModel, JoinAccepted
from agent.messages.chunks import frame
from agent.messages.codec import decode, encode
from agent.messages.kinds import Kind
from agent.roles.aggregator.rejoin import InboxReplay

INBOX = "fl/fed/agent/a1"
SHA = "0" * 64


class KeepingBus:
    """Publishes recorded; ``recent_publishes`` answers what it was given."""

    def __init__(self, recent: list[bytes]) -> None:
        self.recent = recent
        self.published: list[tuple[str, bytes]] = []

    def recent_publishes(self, topic: str) -> list[bytes]:
        return self.recent if topic == INBOX else []

    async def publish(self, topic: str, payload: bytes, **_: Any) -> None:
        self.published.append((topic, payload))


def _message(body: Any, round_: int) -> bytes:
    return encode(body, federation="fed", round=round_, sender="aggregator")


async def test_an_earlier_admission_is_not_resent_what_it_may_have_missed_is() -> None:
    """A restarted trainer has no message id to drop an older ``join_accepted`` by: resent
    after the current one, it took the trainer back to round 3 and model 3, and the
    ``fit_ins`` of version 5 waited for a model that never came again."""
    old_admission = [
        _message(JoinAccepted(agent_id="a1", round=3), 3),
        _message(GlobalModel(version=3, sha256=SHA, tensors=[]), 3),
    ]
    fit = _message(FitIns(model_version=5, model_sha256=SHA, deadline=5.0), 5)
    bus = KeepingBus([*old_admission, fit, frame(b"t" * 16, 0, b"data")])
    await InboxReplay(cast(Bus, bus), "fed").resend("a1")
    assert [(t, decode(p).kind) for t, p in bus.published] == [(INBOX, Kind.FIT_INS)]
