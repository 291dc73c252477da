"""The message codec: round trips, and every kind of bad input becomes a DecodeError."""

from __future__ import annotations

from typing import Any

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
from agent.messages.bodies import (
    BODY_TYPES,
    KIND_OF,
    AdvertiseKeys,
    Body,
    MaskedInput,
    Unmask,
    UnmaskRequest,
)
from agent.messages.codec import decode_body, decode_envelope, encode_envelope
from agent.messages.envelope import Message, new_envelope
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


# -- fuzzing: mutations of valid encodings -------------------------------------------------
#
# Random bytes almost never pass the envelope check, so the fuzz starts from valid encodings
# of bodies of several kinds and mutates them at each layer: the raw bytes, the envelope's
# fields, the body's fields, and a tensor's dtype, shape and bytes. Whatever comes out, decode
# returns a valid message or raises DecodeError, never anything else.

VALID_BODIES: list[Body] = [
    JoinRequest(agent_id="a1", plugin="toy", num_examples=10, capabilities=["secagg"]),
    GlobalModel(
        version=2,
        sha256="0" * 64,
        tensors=to_tensors([np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, np.int64)]),
    ),
    ModelUpdate(
        model_version=2,
        num_examples=5,
        tensors=to_tensors([np.zeros((2, 2), np.float64), np.arange(4, dtype=np.uint8)]),
        metrics={"accuracy": 0.5, "n": 3},
    ),
    FitIns(model_version=1, model_sha256="a" * 64, deadline=30.0, config={"lr": 0.1}),
    EvaluateRes(model_version=1, loss=0.25, num_examples=3, metrics={"accuracy": 0.9}),
    AdvertiseKeys(enc_key=bytes(32), mask_key=b"\x01" * 32),
    MaskedInput(model_version=1, vector=to_tensor(np.arange(5, dtype=np.uint32))),
    Unmask(self_seed={"a2": bytes(64)}, mask_key={"a3": b"\x02" * 64}),
    UnmaskRequest(survivors=["a1", "a2"], dropped=["a3"]),
]
TENSOR_BODIES = [b for b in VALID_BODIES if isinstance(b, GlobalModel | ModelUpdate)]

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
tensor_dtypes = st.sampled_from(
    ["<f4", "<f8", "|u1", "<i8", "|b1", ">f4", "|O", "<c8", "<U1", "f4", "", "<f16"]
) | st.text(max_size=6)


tensor_shapes = st.lists(st.integers(-3, 2**41), max_size=10) | st.lists(
    st.integers(0, 6), max_size=3
)


def decodes_or_refuses(payload: bytes) -> Message[Any] | None:
    """``decode(payload)``: None for a DecodeError; otherwise the message, checked valid (a
    body of the type its kind names, that re-encodes to itself, and, for the kinds whose
    tensors the codec validates, tensors that convert to arrays). Anything else propagates."""
    try:
        msg = decode(payload)
    except DecodeError:
        return None
    assert isinstance(msg.body, BODY_TYPES[msg.kind])
    again = msgspec.msgpack.encode(msg.body)
    assert msgspec.msgpack.encode(decode_body(msg.kind, again)) == again
    if isinstance(msg.body, GlobalModel | ModelUpdate):
        to_arrays(msg.body.tensors)
    return msg


def _valid_encoding(body: Body) -> bytes:
    return encode(body, federation="f", round=1, sender="a")


def _mutate(value: Any, data: st.DataObject) -> Any:
    """``value`` (decoded msgpack) with one random change somewhere inside: a node replaced
    by a random value, or a map key / list element removed or added."""
    children: list[Any] = []
    if isinstance(value, dict):
        children = list(value)
    elif isinstance(value, list):
        children = list(range(len(value)))
    choice = data.draw(st.sampled_from(["replace", "descend", "remove", "add"]))
    if not children or choice == "replace":
        return data.draw(msgpack_values)
    key = data.draw(st.sampled_from(children))
    if choice == "descend":
        value[key] = _mutate(value[key], data)
    elif choice == "remove":
        del value[key]
    elif isinstance(value, dict):
        value[data.draw(st.text(max_size=8))] = data.draw(msgpack_values)
    else:
        value.insert(key, data.draw(msgpack_values))
    return value


def _mutate_bytes(data: bytes, draw: st.DataObject) -> bytes:
    """1-4 random bits flipped, byte runs inserted or deleted, or the tail cut off."""
    out = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 4))):
        at = draw.draw(st.integers(0, len(out)))
        op = draw.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if op == "flip" and at < len(out):
            out[at] ^= 1 << draw.draw(st.integers(0, 7))
        elif op == "insert":
            out[at:at] = draw.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del out[at : at + draw.draw(st.integers(1, 8))]
        elif op == "truncate":
            del out[at:]
    return bytes(out)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(VALID_BODIES), st.booleans(), st.data())
def test_byte_mutations_of_valid_messages_decode_or_raise_decode_error(
    body: Body, inside: bool, data: st.DataObject
) -> None:
    """Bits flipped, bytes inserted, deleted or cut off in a valid encoding, either anywhere
    in it or only in the body bytes under a valid envelope (so that the body and tensor
    checks are reached): a valid message or a DecodeError."""
    if inside:
        raw = _mutate_bytes(msgspec.msgpack.encode(body), data)
        payload = _envelope(KIND_OF[type(body)], raw)
        decode_envelope(payload)  # the envelope passes: the body is what gets checked
    else:
        payload = _mutate_bytes(_valid_encoding(body), data)
    decodes_or_refuses(payload)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(VALID_BODIES), st.data())
def test_envelope_field_mutations_decode_or_raise_decode_error(
    body: Body, data: st.DataObject
) -> None:
    """An envelope field replaced (another kind included, so the body meets the wrong
    type), removed, or an unknown one added: a valid message or a DecodeError."""
    fields = msgspec.msgpack.decode(_valid_encoding(body))
    name = data.draw(st.sampled_from(sorted(fields)))
    change = data.draw(st.sampled_from(["kind", "replace", "remove", "add"]))
    if change == "kind":
        fields["kind"] = str(data.draw(st.sampled_from(list(Kind))))
    elif change == "replace":
        fields[name] = data.draw(msgpack_values)
    elif change == "remove":
        del fields[name]
    else:
        fields[data.draw(st.text(max_size=8))] = data.draw(msgpack_values)
    decodes_or_refuses(msgspec.msgpack.encode(fields))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(VALID_BODIES), st.data())
def test_body_field_mutations_decode_or_raise_decode_error(body: Body, data: st.DataObject) -> None:
    """One change anywhere inside the body (a field, a nested map or list, a tensor) under a
    valid envelope, so the body checks are what decides: a valid message or a DecodeError."""
    kind = KIND_OF[type(body)]
    mutated = _mutate(msgspec.msgpack.decode(msgspec.msgpack.encode(body)), data)
    payload = _envelope(kind, msgspec.msgpack.encode(mutated))
    decode_envelope(payload)  # the envelope passes: the body is what gets checked
    decodes_or_refuses(payload)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(TENSOR_BODIES), st.data())
def test_tensor_mutations_decode_or_raise_decode_error(body: Body, data: st.DataObject) -> None:
    """A tensor's dtype, shape or bytes replaced (any string, negative, huge or too many
    dimensions, short or long data) in an otherwise valid model: a valid message (whose
    tensors convert to arrays) or a DecodeError."""
    kind = KIND_OF[type(body)]
    fields = msgspec.msgpack.decode(msgspec.msgpack.encode(body))
    tensor = data.draw(st.sampled_from(fields["tensors"]))  # [dtype, shape, data]
    for part in data.draw(st.sets(st.sampled_from([0, 1, 2]), min_size=1)):
        if part == 0:
            tensor[0] = data.draw(tensor_dtypes)
        elif part == 1:
            tensor[1] = data.draw(tensor_shapes)
        else:
            tensor[2] = data.draw(
                st.binary(max_size=80) | st.just(tensor[2][:-1]) | st.just(tensor[2] + b"\0")
            )
    payload = _envelope(kind, msgspec.msgpack.encode(fields))
    decode_envelope(payload)
    decodes_or_refuses(payload)


def test_a_masked_input_with_a_bad_vector_is_a_decode_error() -> None:
    """The codec's docstring promises every tensor's dtype and byte length are checked."""
    for vector in (
        Tensor("<u4", [3], b"\0" * 2),  # byte length
        Tensor("<f4", [3], b"\0" * 12),  # not a ring word
        Tensor("<u4", [1, 3], b"\0" * 12),  # not 1-D
    ):
        with pytest.raises(DecodeError):
            decode(_valid_encoding(MaskedInput(model_version=0, vector=vector)))
    ok = MaskedInput(model_version=0, vector=Tensor("<u8", [2], b"\0" * 16))
    assert decode(_valid_encoding(ok)).body == ok


def test_an_empty_tensor_with_huge_dimensions_is_a_decode_error() -> None:
    """Found by the tensor fuzz: zero bytes, shape [0, 2^40, 2^23] (product 0)."""
    model = GlobalModel(version=1, sha256="0" * 64, tensors=[Tensor("<f4", [0, 2**40, 2**23], b"")])
    with pytest.raises(DecodeError):
        decode(_valid_encoding(model))


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


def test_as_tensor_is_to_tensor_without_the_copy() -> None:
    """``as_tensor`` encodes exactly as ``to_tensor``; a C-contiguous little-endian array's
    bytes are shared (read-only), anything else is copied."""
    from agent.messages.tensors import as_tensor

    arrays = [
        np.zeros(0, np.float32),
        np.array(3.0),
        np.ones((2, 3), np.float16),
        np.array([True, False]),
        np.arange(6, dtype=">i4"),
        np.arange(12.0).reshape(3, 4)[:, ::2],
    ]
    for a in arrays:
        t = as_tensor(a)
        assert msgspec.msgpack.encode(t) == msgspec.msgpack.encode(to_tensor(a))
        assert np.array_equal(to_array(t), a)
    shared = np.arange(4, dtype=np.uint32)
    view = as_tensor(shared).data
    assert isinstance(view, memoryview)
    assert view.readonly
    shared[0] = 7
    assert to_array(as_tensor(shared))[0] == 7
