"""What every message body is built on (``agent.messages.bodies``,
``agent.messages.chunk_bodies``): the base struct and the field types they share."""

from __future__ import annotations

from typing import Annotated

import msgspec

Sha256 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
#: A raw X25519 public key, or a 256-bit seed.
Key32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]


class Body(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every body."""
