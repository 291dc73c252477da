"""The bodies of chunked messages (``agent.messages.chunks``): the manifest, and the
receiver's acknowledgement that flow-controls an upload (``agent.runtime.credits``)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from agent.messages.base import Body, Key32, Sha256
from agent.messages.kinds import Kind

#: A SHA-256 digest, raw.
Digest = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
#: The most chunks one message may travel in (``agent.messages.chunks``).
MAX_CHUNKS = 1 << 16


class Manifest(Body, frozen=True):
    """The signed first message of a chunked transfer (``agent.messages.chunks``), on the
    topic its ``kind`` travels on; the chunks follow on the same topic.

    Attributes:
        transfer: 16 random bytes naming the transfer; every chunk carries it.
        kind: the kind of the body carried (its topic must carry that kind).
        header: the body with its tensors' bytes left out (msgpack), or empty when the
            bulk is the whole msgpack body.
        total_size: bytes of the bulk (the tensors' bytes in order, or the whole body).
        chunk_size: bulk bytes per chunk; the last chunk holds the rest.
        sha256: SHA-256 (hex) of the bulk.
        chunk_hashes: SHA-256 of each chunk as it travels (its ciphertext when sealed), in
            index order: ceil(total_size / chunk_size) of them.
        content_key: when sealed, the ChaCha20-Poly1305 key of this message's chunks; it
            travels only inside the HPKE-sealed manifest.
    """

    transfer: Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]
    kind: Kind
    header: Annotated[bytes, msgspec.Meta(max_length=1 << 20)]
    total_size: Annotated[int, msgspec.Meta(ge=1, le=2**40)]
    chunk_size: Annotated[int, msgspec.Meta(ge=1, le=2**31)]
    sha256: Sha256
    chunk_hashes: Annotated[list[Digest], msgspec.Meta(min_length=1, max_length=MAX_CHUNKS)]
    content_key: Key32 | None = None


class ChunkAck(Body, frozen=True):
    """aggregator → a sender's inbox: of the chunked transfer ``transfer`` it has kept
    ``received`` chunks, and the sender may send the chunks with an index below ``grant``
    (granted from one budget shared by every sender, ``agent.runtime.credit_pool``; None: a
    window of chunks beyond ``received``, ``agent.runtime.credits``), so a cohort cannot
    overrun the aggregator's connection or memory."""

    transfer: Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]
    received: Annotated[int, msgspec.Meta(ge=0, le=MAX_CHUNKS)]
    grant: Annotated[int, msgspec.Meta(ge=0, le=MAX_CHUNKS)] | None = None
