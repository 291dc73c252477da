"""The listener registry and the one dispatch point: every drop reason, and the loop survives."""

from __future__ import annotations

import numpy as np
import pytest
from structlog.testing import capture_logs

from agent.bus.base import BusMessage
from agent.errors import UnexpectedKindError
from agent.messages import EvaluateRes, Finish, JoinRequest, Kind, ModelUpdate, encode
from agent.messages.envelope import Message
from agent.messages.tensors import to_tensors
from agent.runtime.dedupe import SeenIds
from agent.runtime.listeners import Dispatcher, ListenerRegistry, RoundPolicy
from tests.helpers import FED, Recorder, make

pytestmark = pytest.mark.timeout(30)


def update(sender: str = "a1", round_: int = 3, fed: str = FED) -> bytes:
    body = ModelUpdate(
        model_version=0, num_examples=1, tensors=to_tensors([np.ones(2, np.float32)])
    )
    return encode(body, federation=fed, round=round_, sender=sender)


def test_registering_a_kind_twice_is_refused() -> None:
    """Two handlers for one kind is a programming error caught at registration."""
    registry = ListenerRegistry()
    registry.register(Kind.JOIN, Recorder(), rounds=RoundPolicy.ANY)
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Kind.JOIN, Recorder(), rounds=RoundPolicy.ANY)


def test_unknown_kind_lookup_raises() -> None:
    """A kind without a listener is an UnexpectedKindError."""
    with pytest.raises(UnexpectedKindError):
        ListenerRegistry().get(Kind.FINISH)


async def test_a_valid_message_reaches_its_handler() -> None:
    """A well-formed, current, first-seen message runs its listener once."""
    dispatcher, rec, _ = make()
    assert await dispatcher.dispatch(BusMessage("fl/fed/model_para/update/a1", update()))
    assert [m.sender for m in rec.seen] == ["a1"]
    assert rec.seen[0].topic == "fl/fed/model_para/update/a1"


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("fl/fed/model_para/update/a1", b"\x00garbage", "malformed"),
        ("fl/fed/model_para/update/a1", b"\x81\xa6\x00\x00\x00\x00\x00\x80", "malformed"),
        ("fl/fed/model_para/update/a1", update(fed="other"), "wrong_federation"),
        ("fl/fed/join", update(), "wrong_topic"),
        ("fl/fed/model_para/update/a2", update(sender="a1"), "sender_mismatch"),
        ("fl/fed/model_para/update/a1", update(round_=2), "stale_round"),
        ("fl/fed/model_para/update/a1", update(round_=4), "stale_round"),
        ("fl/fed/model_para/update/a1", b"x" * 10_001, "oversized"),
        (
            "fl/fed/finish",
            encode(
                Finish(reason="r", final_version=1, model_sha256="0" * 64),
                federation=FED,
                round=3,
                sender="agg",
            ),
            "unexpected_kind",
        ),
    ],
)
async def test_bad_messages_are_dropped_with_a_reason(
    topic: str, payload: bytes, reason: str
) -> None:
    """Each failed check drops the message with one message_dropped line naming the reason,
    runs no handler, and the next good message still gets through."""
    dispatcher, rec, _ = make()
    with capture_logs() as logs:
        assert not await dispatcher.dispatch(BusMessage(topic, payload))
    assert [e["reason"] for e in logs if e["event"] == "message_dropped"] == [reason]
    assert rec.seen == []
    assert dispatcher.dropped == {reason: 1}
    assert await dispatcher.dispatch(BusMessage("fl/fed/model_para/update/a1", update()))


async def test_duplicates_run_no_handler_twice() -> None:
    """The same message delivered twice (QoS 1 redelivery) runs its handler once."""
    dispatcher, rec, _ = make()
    payload = update()
    with capture_logs() as logs:
        assert await dispatcher.dispatch(BusMessage("fl/fed/model_para/update/a1", payload))
        assert not await dispatcher.dispatch(BusMessage("fl/fed/model_para/update/a1", payload))
    assert len(rec.seen) == 1
    assert [e["reason"] for e in logs if e["event"] == "message_dropped"] == ["duplicate"]


async def test_round_policies() -> None:
    """ANY ignores rounds, CURRENT wants the current round, NOT_STALE also takes later ones."""
    dispatcher, rec, current = make(round_=5)
    join = encode(
        JoinRequest(agent_id="a1", plugin="p", num_examples=1), federation=FED, round=0, sender="a1"
    )
    assert await dispatcher.dispatch(BusMessage("fl/fed/join", join))

    def metrics(r):
        return encode(
            EvaluateRes(model_version=1, loss=0.1, num_examples=1),
            federation=FED,
            round=r,
            sender="a1",
        )

    assert not await dispatcher.dispatch(BusMessage("fl/fed/metrics/a1", metrics(4)))
    assert await dispatcher.dispatch(BusMessage("fl/fed/metrics/a1", metrics(5)))
    assert await dispatcher.dispatch(BusMessage("fl/fed/metrics/a1", metrics(6)))
    current[0] = 6
    assert await dispatcher.dispatch(BusMessage("fl/fed/model_para/update/a1", update(round_=6)))
    assert len(rec.seen) == 4


async def test_a_failing_handler_is_logged_and_the_loop_goes_on() -> None:
    """A handler that raises is logged as handler_failed; dispatch keeps working."""
    registry = ListenerRegistry()
    calls: list[str] = []

    async def boom(message: Message) -> None:
        calls.append(message.sender)
        raise RuntimeError("plugin exploded")

    registry.register(Kind.MODEL_UPDATE, boom, rounds=RoundPolicy.ANY)
    dispatcher = Dispatcher(
        federation=FED, registry=registry, current_round=lambda: 3, max_payload=10_000
    )
    with capture_logs() as logs:
        assert not await dispatcher.dispatch(BusMessage("fl/fed/model_para/update/a1", update()))
        assert not await dispatcher.dispatch(BusMessage("fl/fed/model_para/update/a1", update()))
    assert calls == ["a1", "a1"]
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["handler_failed"] * 2


def test_seen_ids_forget_the_oldest() -> None:
    """The duplicate memory is bounded and forgets least recently seen ids first."""
    seen = SeenIds(capacity=2)
    assert seen.add(b"a")
    assert seen.add(b"b")
    assert not seen.add(b"a")  # refreshes a
    assert seen.add(b"c")  # evicts b
    assert b"a" in seen
    assert b"c" in seen
    assert b"b" not in seen
    assert len(seen) == 2
