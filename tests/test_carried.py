"""The integer arrays beside a SecAgg+ masked input, piece by piece: what a trainer sends
(``roles.trainer.carried``, ``async_fit``), what the wire admits (no float array: ``codec``;
chunked: ``chunks``), and what the aggregator keeps (``roles.aggregator.secure_carried``:
only a counted member's, only arrays like the model's). Over real brokers:
``test_carried_brokers.py``."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import msgspec
import numpy as np
import pytest
from structlog.testing import capture_logs

from agent.async_settings import AsyncConfig
from agent.errors import DecodeError, RefusedError
from agent.messages import Kind
from agent.messages.bodies import FitIns, MaskedInput
from agent.messages.chunks import join_body, split_body
from agent.messages.codec import decode_body
from agent.messages.tensors import to_arrays, to_tensor, to_tensors
from agent.plugin.api import FitResult
from agent.roles.aggregator import secure_carried
from agent.roles.trainer.async_fit import Held, HeldUpdate
from agent.roles.trainer.carried import beside
from agent.roles.trainer.model import HeldModel
from agent.strategy.carried import CarriedValues

MODEL = [np.zeros(3, np.float32), np.array(5, np.int64), np.zeros(2, np.int32)]
SHA = "0" * 64


def _masked(carried: list[Any]) -> MaskedInput:
    return MaskedInput(
        model_version=1, vector=to_tensor(np.arange(4, dtype=np.uint32)), carried=carried
    )


def test_a_trainer_sends_its_integer_arrays_only_when_it_reveals_them() -> None:
    trained = [np.ones(3, np.float32), np.array(9, np.int64), np.array([1, -1], np.int32)]
    sent = beside(_masked([]), trained, reveal=True)
    assert [a.tolist() for a in to_arrays(sent.carried)] == [9, [1, -1]]
    assert [t.dtype for t in sent.carried] == ["<i8", "<i4"]
    assert beside(_masked([]), trained, reveal=False).carried == []
    assert beside(_masked([]), [np.ones(3, np.float32)], reveal=True).carried == []


def test_the_codec_refuses_a_float_array_beside_a_masked_input() -> None:
    good = _masked(to_tensors([np.array(3, np.int64), np.array([True])]))
    assert decode_body(Kind.MASKED_INPUT, msgspec.msgpack.encode(good)) == good
    bad = _masked([to_tensor(np.array([0.5], np.float32))])
    with pytest.raises(DecodeError, match="float"):
        decode_body(Kind.MASKED_INPUT, msgspec.msgpack.encode(bad))


def test_carried_arrays_travel_in_the_bulk_of_a_chunked_masked_input() -> None:
    body = _masked(to_tensors([np.array(3, np.int64), np.array([4, 5], np.int32)]))
    header, bulk = split_body(body)
    assert b"\x03\x00\x00\x00\x00\x00\x00\x00" not in header
    joined = join_body(Kind.MASKED_INPUT, header, memoryview(b"".join(bytes(b) for b in bulk)))
    assert isinstance(joined, MaskedInput)
    assert [a.tolist() for a in to_arrays(joined.carried)] == [3, [4, 5]]
    assert to_arrays([joined.vector])[0].tolist() == [0, 1, 2, 3]


def test_a_held_async_update_keeps_its_trained_integer_arrays() -> None:
    """The held update's floats are weighed by s(τ); its counter is the trained one."""
    held = HeldUpdate(outbox=cast(Any, None), agent_id="a")
    trained = [np.full(3, 2, np.float32), np.array(8, np.int64), np.array([1, 2], np.int32)]
    held.held = Held(HeldModel(0, SHA, MODEL), FitResult(trained, 1, {}))
    ins = FitIns(model_version=1, model_sha256=SHA, deadline=5.0, config=AsyncConfig().fit_config())
    taken = held.take(ins)
    assert taken is not None
    weights = taken[1].weights
    np.testing.assert_allclose(weights[0], 2 / np.sqrt(2))  # s(1) = 1/√2
    assert int(weights[1]) == 8
    assert weights[1].dtype == np.int64
    assert weights[2].tolist() == [1, 2]


class _Round:
    """A stand-in for ``SecureRound``: counts each sender's first masked input."""

    def __init__(self) -> None:
        self.state = SimpleNamespace(survivors=set())

    def on_masked_input(self, sender: str, body: MaskedInput) -> None:
        self.state.survivors.add(sender)


def test_the_aggregator_keeps_only_counted_members_arrays_like_the_model() -> None:
    carried, secure = CarriedValues(MODEL), _Round()
    ok = to_tensors([np.array(7, np.int64), np.array([3, 4], np.int32)])
    secure_carried.receive(cast(Any, secure), carried, "a", _masked(ok))
    again = to_tensors([np.array(2**40, np.int64), np.array([0, 0], np.int32)])
    secure_carried.receive(cast(Any, secure), carried, "a", _masked(again))  # not counted
    with capture_logs() as logs:
        unlike = to_tensors([np.array(7, np.int32), np.array([3, 4], np.int32)])
        secure_carried.receive(cast(Any, secure), carried, "b", _masked(unlike))
    assert secure.state.survivors == {"a"}  # b's masked input refused whole
    assert [e["reason"] for e in logs] == ["carried_mismatch"]
    new = carried.apply(list(MODEL), ["a", "b"])
    assert int(new[1]) == 7
    assert new[2].tolist() == [3, 4]
    with pytest.raises(RefusedError):
        carried.check(to_arrays(ok)[:1])


def test_a_masked_input_without_carried_arrays_is_counted_and_changes_nothing() -> None:
    carried, secure = CarriedValues(MODEL), _Round()
    secure_carried.receive(cast(Any, secure), carried, "a", _masked([]))
    assert secure.state.survivors == {"a"}
    assert not carried.reported("a")
    assert int(carried.apply(list(MODEL), ["a"])[1]) == 5
