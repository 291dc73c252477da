"""What every message body is built on (``agent.messages.bodies``,
``agent.messages.chunk_bodies``): the base struct and the field types they share."""

from __future__ import annotations

from typing import Annotated

import msgspec

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
#: An agent id, federation id or plugin name: 1-64 of [A-Za-z0-9_-], starting alphanumeric.
Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
Text = Annotated[str, msgspec.Meta(max_length=1024)]
Sha256 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
#: A raw X25519 public key, or a 256-bit seed.
Key32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]


class Body(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every body."""
