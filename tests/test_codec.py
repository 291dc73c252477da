"""The message codec: round trips, and every kind of bad input becomes a DecodeError."""

from __future__ import annotations

import contextlib

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from agent.errors import DecodeError, OversizedError
from agent.messages import (
    EvaluateRes,
    FitIns,
    GlobalModel,
    JoinRequest,
    Kind,
    ModelUpdate,
    decode,
    encode,
)
from agent.messages.codec import encode_envelope
from agent.messages.envelope import new_envelope
from agent.messages.tensors import Tensor, digest, to_array, to_arrays, to_tensor, to_tensors

pytestmark = pytest.mark.timeout(60)

names = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,20}\Z")
dtypes = st.sampled_from(
    ["float32", "float64", "float16", "int8", "int32", "int64", "uint8", "uint32"]
)
arrays = dtypes.flatmap(
    lambda d: hnp.arrays(d, hnp.array_shapes(min_dims=0, max_dims=4, max_side=5))
)
scalars = st.one_of(
    st.booleans(), st.integers(-(2**53), 2**53), st.floats(allow_nan=False), st.text(max_size=10)
)


@given(arrays)
def test_tensor_round_trip(array: np.ndarray) -> None:
    """Any allowed array survives to_tensor/to_array bit for bit, shape and dtype included."""
    back = to_array(to_tensor(array))
    assert back.shape == array.shape
    assert back.dtype == array.dtype.newbyteorder("<")
    assert back.tobytes() == np.asarray(array, array.dtype.newbyteorder("<")).tobytes()


def test_big_endian_arrays_travel_little_endian() -> None:
    """A big-endian array is converted, so the wire is always little-endian."""
    a = np.arange(4, dtype=">f4")
    t = to_tensor(a)
    assert t.dtype == "<f4"
    np.testing.assert_array_equal(to_array(t), a)


def test_object_arrays_cannot_travel() -> None:
    """Object (pickle-only) arrays are refused at the sender."""
    with pytest.raises(ValueError, match="cannot travel"):
        to_tensor(np.array([object()], dtype=object))


@given(
    names,
    names,
    st.integers(0, 2**31),
    st.lists(arrays, max_size=4),
    st.dictionaries(st.text(max_size=8), scalars, max_size=4),
    st.integers(1, 10**6),
)
@settings(max_examples=60)
def test_message_round_trip(
    fed: str, sender: str, rnd: int, weights: list[np.ndarray], metrics: dict, n: int
) -> None:
    """An encoded update decodes to the same envelope fields, body and tensors."""
    body = ModelUpdate(
        model_version=3, num_examples=n, tensors=to_tensors(weights), metrics=metrics
    )
    msg = decode(encode(body, federation=fed, round=rnd, sender=sender), topic="t")
    assert (msg.kind, msg.envelope.federation, msg.round, msg.sender) == (
        Kind.MODEL_UPDATE,
        fed,
        rnd,
        sender,
    )
    assert msg.body == body
    for a, b in zip(to_arrays(msg.body.tensors), weights, strict=True):
        assert a.tobytes() == np.asarray(b, b.dtype.newbyteorder("<")).tobytes()


@given(st.binary(max_size=300))
def test_random_bytes_never_escape_as_anything_but_decode_error(data: bytes) -> None:
    """Garbage never raises anything but DecodeError (or decodes, if it happens to be valid)."""
    with contextlib.suppress(DecodeError):
        decode(data)


def _envelope(kind: Kind, body: bytes, **kw: object) -> bytes:
    fields = {"kind": kind, "federation": "f", "round": 1, "sender": "a", "body": body} | kw
    return encode_envelope(new_envelope(**fields))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"\x93\x01\x02", "bad envelope"),
        (_envelope(Kind.JOIN, b"\xc1"), "bad join body"),
        (b"\x81\xa6\x00\x00\x00\x00\x00\x80", "bad envelope"),
        (_envelope(Kind.JOIN, b"\x81\xa1\x80\x00"), "bad join body"),
        (
            _envelope(Kind.JOIN, msgspec.msgpack.encode({"agent_id": "a", "plugin": "p"})),
            "num_examples",
        ),
        (
            _envelope(
                Kind.JOIN,
                msgspec.msgpack.encode({"agent_id": "a/b", "plugin": "p", "num_examples": 1}),
            ),
            "agent_id",
        ),
        (
            _envelope(
                Kind.JOIN,
                msgspec.msgpack.encode({"agent_id": "a", "plugin": "p", "num_examples": -1}),
            ),
            "num_examples",
        ),
        (
            _envelope(
                Kind.JOIN,
                msgspec.msgpack.encode(
                    {"agent_id": "a", "plugin": "p", "num_examples": 1, "extra": 1}
                ),
            ),
            "extra",
        ),
        (
            msgspec.msgpack.encode(
                {
                    "kind": "nope",
                    "federation": "f",
                    "round": 0,
                    "sender": "a",
                    "message_id": b"0" * 16,
                    "timestamp": 0.0,
                    "body": b"",
                }
            ),
            "kind",
        ),
        (
            msgspec.msgpack.encode(
                {
                    "kind": "join",
                    "federation": "f",
                    "round": 0,
                    "sender": "a",
                    "message_id": b"0" * 3,
                    "timestamp": 0.0,
                    "body": b"",
                }
            ),
            "message_id",
        ),
        (
            _envelope(
                Kind.MODEL_PARA,
                msgspec.msgpack.encode(
                    GlobalModel(
                        version=1, sha256="0" * 64, tensors=[Tensor("<f4", [2, 2], b"\0" * 15)]
                    )
                ),
            ),
            "needs 16 bytes",
        ),
        (
            _envelope(
                Kind.MODEL_PARA,
                msgspec.msgpack.encode(
                    GlobalModel(version=1, sha256="0" * 64, tensors=[Tensor("|O", [1], b"\0" * 8)])
                ),
            ),
            "not allowed",
        ),
    ],
    ids=[
        "truncated",
        "bad-body-bytes",
        "non-utf8-envelope-key",
        "non-utf8-body-key",
        "missing-field",
        "bad-name",
        "negative-count",
        "unknown-field",
        "unknown-kind",
        "short-message-id",
        "tensor-length",
        "tensor-dtype",
    ],
)
def test_malformed_payloads_raise_decode_error(payload: bytes, fragment: str) -> None:
    """Each malformed shape is a DecodeError whose message says what was wrong."""
    with pytest.raises(DecodeError, match=fragment):
        decode(payload)


def test_oversized_payload_is_refused_before_decoding() -> None:
    """A payload over the limit is refused by size alone."""
    payload = encode(
        JoinRequest(agent_id="a", plugin="p", num_examples=1), federation="f", round=0, sender="a"
    )
    with pytest.raises(OversizedError):
        decode(payload, max_size=len(payload) - 1)


def test_each_message_gets_a_fresh_id() -> None:
    """Two encodings of the same body carry different message ids."""
    body = FitIns(model_version=0, model_sha256="a" * 64, deadline=1.0)
    a = decode(encode(body, federation="f", round=1, sender="x"))
    b = decode(encode(body, federation="f", round=1, sender="x"))
    assert a.envelope.message_id != b.envelope.message_id


def test_digest_depends_on_values_shapes_and_dtypes() -> None:
    """The model digest changes with a value, a shape or a dtype."""
    base = digest(to_tensors([np.zeros((2, 3), np.float32)]))
    assert base != digest(to_tensors([np.zeros((3, 2), np.float32)]))
    assert base != digest(to_tensors([np.zeros((2, 3), np.float64)]))
    assert base != digest(to_tensors([np.eye(2, 3, dtype=np.float32)]))
    assert base == digest(to_tensors([np.zeros((2, 3), np.float32)]))


def test_metrics_body_accepts_scalars_only() -> None:
    """Metric values are scalars; a nested structure is malformed."""
    payload = _envelope(
        Kind.METRICS,
        msgspec.msgpack.encode(
            {"model_version": 1, "loss": 0.5, "num_examples": 3, "metrics": {"x": [1, 2]}}
        ),
    )
    with pytest.raises(DecodeError):
        decode(payload)
    ok = EvaluateRes(model_version=1, loss=0.5, num_examples=3, metrics={"accuracy": 0.9})
    assert decode(encode(ok, federation="f", round=1, sender="a")).body == ok
