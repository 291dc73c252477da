"""Encoding and decoding of messages. Every failure to decode is a ``DecodeError``.

``decode`` checks, in order: size limit, envelope structure and types, then the body against
the type its kind names, including every tensor's dtype and byte length. It never executes
anything from the payload (msgpack only; no pickle anywhere).
"""

from __future__ import annotations

from typing import Any

import msgspec

from agent.errors import DecodeError, OversizedError
from agent.messages.bodies import BODY_TYPES, KIND_OF, Body, GlobalModel, ModelUpdate
from agent.messages.envelope import Envelope, Message, new_envelope
from agent.messages.tensors import to_array

_encoder = msgspec.msgpack.Encoder()
_envelope_decoder = msgspec.msgpack.Decoder(Envelope)
_body_decoders = {kind: msgspec.msgpack.Decoder(t) for kind, t in BODY_TYPES.items()}


def encode(body: Body, *, federation: str, round: int, sender: str) -> bytes:
    """Wrap ``body`` in a fresh envelope (kind from the body's type) and encode it."""
    return encode_envelope(
        new_envelope(
            kind=KIND_OF[type(body)],
            federation=federation,
            round=round,
            sender=sender,
            body=_encoder.encode(body),
        )
    )


def encode_envelope(envelope: Envelope) -> bytes:
    """Encode an already built envelope (tests use this to build odd messages)."""
    return _encoder.encode(envelope)


def decode(payload: bytes, *, topic: str = "", max_size: int | None = None) -> Message[Any]:
    """Decode and validate ``payload`` into a ``Message``.

    Raises:
        OversizedError: ``len(payload) > max_size``.
        DecodeError: anything malformed, with a message saying what.
    """
    if max_size is not None and len(payload) > max_size:
        raise OversizedError(len(payload), max_size)
    # msgspec raises DecodeError for most bad input, but UnicodeDecodeError for a string
    # (e.g. a map key) that is not UTF-8: both are malformed input.
    try:
        envelope = _envelope_decoder.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise DecodeError(f"bad envelope: {exc}") from exc
    try:
        body = _body_decoders[envelope.kind].decode(envelope.body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise DecodeError(f"bad {envelope.kind} body: {exc}") from exc
    if isinstance(body, GlobalModel | ModelUpdate):
        for tensor in body.tensors:
            to_array(tensor)  # validates dtype and byte length
    return Message(envelope=envelope, body=body, topic=topic)
