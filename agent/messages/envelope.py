"""The envelope: one wire format for every message (ARCHITECTURE.md §3).

The envelope is msgpack (via msgspec) with the body as an inner msgpack byte string, so the
body can be decoded by kind after the envelope checks pass (and, later, signed as bytes).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Annotated, Generic, TypeVar

import msgspec

from agent.messages.bodies import Body, Name
from agent.messages.kinds import Kind
from agent.role import Identity

WIRE_VERSION = 1

B = TypeVar("B", bound=Body)


class Envelope(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What every message carries around its body.

    Attributes:
        v: wire format version (``WIRE_VERSION``).
        kind: the message kind; decides the body type.
        federation: the federation id the message belongs to.
        round: the aggregator's round the message is about (0 before the first round).
        sender: the agent id (or aggregator id) that built it.
        message_id: 16 random bytes; receivers drop ids they have seen.
        timestamp: sender's wall clock, seconds since the Unix epoch.
        body: the msgpack-encoded body of type ``BODY_TYPES[kind]``, or, when ``sealed``,
            its HPKE ciphertext to the aggregator (``agent.messages.sealing``).
        sealed: the body is sealed.
    """

    v: Annotated[int, msgspec.Meta(ge=WIRE_VERSION, le=WIRE_VERSION)] = WIRE_VERSION
    kind: Kind
    federation: Name
    round: Annotated[int, msgspec.Meta(ge=0, le=2**31)]
    sender: Name
    message_id: Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]
    timestamp: float
    body: bytes
    sealed: bool = False


def new_envelope(
    *, kind: Kind, federation: str, round: int, sender: str, body: bytes, sealed: bool = False
) -> Envelope:
    """An envelope with a fresh random ``message_id`` and the current time."""
    return Envelope(
        kind=kind,
        federation=federation,
        round=round,
        sender=sender,
        message_id=os.urandom(16),
        timestamp=time.time(),
        body=body,
        sealed=sealed,
    )


@dataclass(frozen=True, slots=True)
class Message(Generic[B]):
    """A decoded, validated message: its envelope, its typed body and the topic it came on."""

    envelope: Envelope
    body: B
    topic: str
    #: the verified signer (None where identities are off)
    identity: Identity | None = None

    @property
    def kind(self) -> Kind:
        return self.envelope.kind

    @property
    def round(self) -> int:
        return self.envelope.round

    @property
    def sender(self) -> str:
        return self.envelope.sender
