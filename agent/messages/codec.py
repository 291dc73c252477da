"""Encoding and decoding of messages. Every failure to decode is a ``DecodeError``.

``decode`` checks, in order: size limit, envelope structure and types, then the body against
the type its kind names, including every tensor's dtype and byte length. It never executes
anything from the payload (msgpack only; no pickle anywhere).
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from agent.errors import DecodeError, OversizedError
from agent.messages.bodies import (
    BODY_TYPES,
    KIND_OF,
    Body,
    GlobalModel,
    Manifest,
    MaskedInput,
    ModelUpdate,
)
from agent.messages.envelope import Envelope, Message, new_envelope
from agent.messages.kinds import Kind
from agent.messages.sealing import SEALED_KINDS, seal, seal_info
from agent.messages.signing import Signed, Signer, unwrap
from agent.messages.tensors import to_array

_encoder = msgspec.msgpack.Encoder()
_envelope_decoder = msgspec.msgpack.Decoder(Envelope)


@functools.cache
def _body_decoder(kind: Kind) -> msgspec.msgpack.Decoder[Any]:
    """The decoder of ``kind``'s body, built when first needed: building one evaluates its
    struct's annotations, about 5 ms at every start for all kinds, of which a trainer
    decodes a few (issue 15)."""
    return msgspec.msgpack.Decoder(BODY_TYPES[kind])


def encode(
    body: Body,
    *,
    federation: str,
    round: int,
    sender: str,
    signer: Signer | None = None,
    seal_to: X25519PublicKey | None = None,
) -> bytes:
    """Wrap ``body`` in a fresh envelope (kind from the body's type) and encode it.

    With ``seal_to``, a body of a kind in ``SEALED_KINDS`` is sealed to that key
    (``agent.messages.sealing``); with ``signer``, the envelope is signed
    (``agent.messages.signing``).
    """
    kind = KIND_OF[type(body)]
    data = _encoder.encode(body)
    sealed = False
    if seal_to is not None and sealed_kind(body) in SEALED_KINDS:
        info = seal_info(federation=federation, round=round, sender=sender, kind=kind)
        data, sealed = seal(data, seal_to, info), True
    envelope = encode_envelope(
        new_envelope(
            kind=kind, federation=federation, round=round, sender=sender, body=data, sealed=sealed
        )
    )
    return envelope if signer is None else signer.sign(envelope)


def sealed_kind(body: Body) -> Kind:
    """The kind whose sealing rule ``body`` follows: a manifest's, the kind it carries."""
    return body.kind if isinstance(body, Manifest) else KIND_OF[type(body)]


def encode_envelope(envelope: Envelope) -> bytes:
    """Encode an already built envelope (tests use this to build odd messages)."""
    return _encoder.encode(envelope)


def decode_envelope(
    payload: bytes, *, max_size: int | None = None
) -> tuple[Envelope, Signed | None]:
    """The envelope of ``payload`` and, for a signed payload, its (unchecked) signature.

    Raises:
        OversizedError: ``len(payload) > max_size``.
        DecodeError: anything malformed, with a message saying what.
    """
    if max_size is not None and len(payload) > max_size:
        raise OversizedError(len(payload), max_size)
    # msgspec raises DecodeError for most bad input, but UnicodeDecodeError for a string
    # (e.g. a map key) that is not UTF-8: both are malformed input.
    try:
        raw, signed = unwrap(payload)
        return _envelope_decoder.decode(raw), signed
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise DecodeError(f"bad envelope: {exc}") from exc


#: The dtypes a SecAgg+ masked vector travels in (ring Z_2^32 or Z_2^64 words).
MASKED_DTYPES = frozenset({"<u4", "<u8"})


def decode_body(kind: Kind, data: bytes) -> Body:
    """The body of a ``kind`` message, validated (tensors included). The same bytes decoded
    lately give the same (frozen) body again, from ``_RECENT``.

    Raises:
        DecodeError: a malformed body.
    """
    key = (kind, data)
    cached = len(data) <= RECENT_MAX_BYTES
    if cached and (body := _RECENT.get(key)) is not None:
        return body
    try:
        body = validate_body(_body_decoder(kind).decode(data))
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise DecodeError(f"bad {kind} body: {exc}") from exc
    if cached:
        _RECENT.put(key, body)
    return body


class _Recent:
    """The last ``size`` bodies decoded, by (kind, bytes): the members of a fleet process
    (``agent.fleet``) each receive the same broadcast, and the same ``fit_ins`` body in their
    inboxes; decoding and validating it (at n = 1,000 a cohort of 1,000 names) once per
    process instead of once per member was 40% of a fleet process's event loop (issue 15).
    Sharing is safe: a body is a frozen struct, its arrays read-only views. Thread-safe."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._bodies: OrderedDict[tuple[Kind, bytes], Body] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[Kind, bytes]) -> Body | None:
        with self._lock:
            body = self._bodies.get(key)
            if body is not None:
                self._bodies.move_to_end(key)
            return body

    def put(self, key: tuple[Kind, bytes], body: Body) -> None:
        with self._lock:
            self._bodies[key] = body
            if len(self._bodies) > self._size:
                self._bodies.popitem(last=False)


#: Bodies larger than this are not remembered (a model: its bytes would stay alive).
RECENT_MAX_BYTES = 1 << 20
_RECENT = _Recent(32)


def validate_body(body: Body) -> Body:
    """Check the tensors of a decoded (or reassembled) body; return it.

    Raises:
        DecodeError: a tensor of a bad dtype or length, or a malformed masked vector.
    """
    if isinstance(body, GlobalModel | ModelUpdate):
        for tensor in body.tensors:
            to_array(tensor)  # validates dtype and byte length
    elif isinstance(body, MaskedInput):
        # 1-D ring words; the round checks the length (d + 1), which only it knows
        if body.vector.dtype not in MASKED_DTYPES or len(body.vector.shape) != 1:
            raise DecodeError(
                f"a masked input is 1-D {sorted(MASKED_DTYPES)}, "
                f"not {body.vector.dtype} {tuple(body.vector.shape)}"
            )
        to_array(body.vector)
        for tensor in body.carried:  # integer arrays only: no float value in the clear
            if to_array(tensor).dtype.kind == "f":
                raise DecodeError(f"a masked input carries a float array ({tensor.dtype})")
    return body


def decode(payload: bytes, *, topic: str = "", max_size: int | None = None) -> Message[Any]:
    """Decode and validate ``payload`` into a ``Message``, without checking a signature
    (the receive loop does that: ``agent.runtime.listeners``).

    Raises:
        OversizedError: ``len(payload) > max_size``.
        DecodeError: anything malformed, or a sealed body (only the aggregator opens those).
    """
    envelope, _ = decode_envelope(payload, max_size=max_size)
    if envelope.sealed:
        raise DecodeError(f"the {envelope.kind} body is sealed")
    return Message(envelope=envelope, body=decode_body(envelope.kind, envelope.body), topic=topic)
