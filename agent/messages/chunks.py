"""Chunked messages: one mechanism for any body larger than the chunk size, on every bus.

A body of more than ``chunk_size`` bulk bytes travels as a ``Manifest`` (``Kind.MANIFEST``,
an ordinary envelope: signed with identities on, HPKE-sealed when the kind it carries is
sealed) followed by its chunks on the same topic. The *bulk* is the tensors' bytes in order
(``model_para``, ``model_update``, ``masked_input``: the manifest's ``header`` is the body with
those bytes left out; a masked input's are its vector's, then its carried integer arrays')
or, for any other kind, the whole msgpack body. A chunk is not an envelope but a frame::

    MAGIC (4) ‖ transfer id (16) ‖ index (uint32 LE) ‖ data

checked on arrival against the manifest (``sha256(data) == chunk_hashes[index]``), so one
signature covers the whole message. When sealed, ``data`` is ChaCha20-Poly1305 (RFC 8439)
under the message's ``content_key`` (fresh per message, sent only inside the sealed
manifest), with the chunk index as the 96-bit nonce and ``transfer ‖ index ‖ count`` as the
associated data: the nonce-per-segment layout of the STREAM construction (Hoang, Reyhanitabar,
Rogaway and Vizár, "Online Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance",
CRYPTO 2015, §7), where the signed manifest's chunk count and hashes stand in for STREAM's
last-segment flag against truncation and reordering.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

import msgspec
import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from agent.errors import DecodeError, SealError
from agent.messages.bodies import (
    BODY_TYPES,
    KIND_OF,
    MAX_CHUNKS,
    Body,
    GlobalModel,
    Manifest,
    MaskedInput,
    ModelUpdate,
)
from agent.messages.kinds import Kind
from agent.messages.tensors import ALLOWED_DTYPES, Tensor

MAGIC = b"FBC1"
_FRAME = struct.Struct("<4s16sI")
#: Bytes a chunk frame adds to its data: the frame header and, sealed, the AEAD tag.
FRAME_OVERHEAD = _FRAME.size + 16
#: Room an envelope (ids, names, timestamp), its signature and its certificate take around
#: a body: a message whose body fits ``chunk_size`` fits ``chunk_size + ENVELOPE_MARGIN``.
ENVELOPE_MARGIN = 8 * 1024
#: The smallest chunk size a config may set (keeps the manifest's hash list small).
MIN_CHUNK_SIZE = 64 * 1024

_encoder = msgspec.msgpack.Encoder()
_hollow_decoders = {kind: msgspec.msgpack.Decoder(BODY_TYPES[kind]) for kind in BODY_TYPES}


@dataclass(frozen=True, slots=True)
class ChunkingPlan:
    """How a message of ``nbytes`` bulk bytes travels with ``chunk_size``.

    Attributes:
        chunked: more than one chunk's worth: manifest plus ``chunks`` chunks.
        chunks: number of chunks (1 when not chunked).
        wire_bytes: about what goes on the wire (frames; the envelope margin once).
    """

    nbytes: int
    chunk_size: int
    chunked: bool
    chunks: int
    wire_bytes: int


def chunking_plan(nbytes: int, chunk_size: int) -> ChunkingPlan:
    """The plan for ``nbytes`` of bulk (a model: its tensors' bytes) at ``chunk_size``.

    Raises:
        ValueError: ``chunk_size`` < 1, or more than ``MAX_CHUNKS`` chunks would be needed.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if nbytes <= chunk_size:
        return ChunkingPlan(nbytes, chunk_size, False, 1, nbytes + ENVELOPE_MARGIN)
    count = math.ceil(nbytes / chunk_size)
    if count > MAX_CHUNKS:
        raise ValueError(
            f"{nbytes} bytes need {count} chunks of {chunk_size}, more than {MAX_CHUNKS}: "
            "raise [transfer] chunk_size"
        )
    return ChunkingPlan(
        nbytes, chunk_size, True, count, nbytes + count * FRAME_OVERHEAD + ENVELOPE_MARGIN
    )


# -- bodies as header + bulk ------------------------------------------------------------


def split_body(body: Body) -> tuple[bytes, list[memoryview]]:
    """``body`` as (header, bulk buffers): for tensor bodies the body without its tensors'
    bytes and those bytes in order (no copy); else an empty header and the msgpack body."""
    if isinstance(body, GlobalModel | ModelUpdate):
        hollow: Body = msgspec.structs.replace(body, tensors=[_hollow(t) for t in body.tensors])
        return _encoder.encode(hollow), [memoryview(t.data) for t in body.tensors]
    if isinstance(body, MaskedInput):  # the vector's bytes, then the carried arrays'
        tensors = [body.vector, *body.carried]
        hollow = msgspec.structs.replace(
            body, vector=_hollow(body.vector), carried=[_hollow(t) for t in body.carried]
        )
        return _encoder.encode(hollow), [memoryview(t.data) for t in tensors]
    return b"", [memoryview(_encoder.encode(body))]


def bulk_size(body: Body) -> int:
    """Bulk bytes of ``body`` without encoding its tensors (see ``split_body``)."""
    if isinstance(body, GlobalModel | ModelUpdate):
        return sum(len(t.data) for t in body.tensors)
    if isinstance(body, MaskedInput):
        return len(body.vector.data) + sum(len(t.data) for t in body.carried)
    return len(_encoder.encode(body))


def join_body(kind: Kind, header: bytes, bulk: memoryview) -> Body:
    """The body of ``kind`` from its manifest ``header`` and its reassembled ``bulk``; the
    tensors' bytes are views of ``bulk`` (no copy). The caller validates the result like any
    decoded body (``codec.validate_body``).

    Raises:
        DecodeError: a header that does not decode, or a bulk of the wrong length.
    """
    try:
        if not header:
            return _hollow_decoders[kind].decode(bulk)
        body = _hollow_decoders[kind].decode(header)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise DecodeError(f"bad chunked {kind} body: {exc}") from exc
    if isinstance(body, GlobalModel | ModelUpdate):
        tensors, end = _fill(body.tensors, bulk)
        body = msgspec.structs.replace(body, tensors=tensors)
    elif isinstance(body, MaskedInput):
        (vector, *carried), end = _fill([body.vector, *body.carried], bulk)
        body = msgspec.structs.replace(body, vector=vector, carried=carried)
    else:
        raise DecodeError(f"a {kind} body has no tensors to carry in chunks")
    if end != len(bulk):
        raise DecodeError(f"the header's tensors hold {end} bytes, the bulk {len(bulk)}")
    return body


def _hollow(tensor: Tensor) -> Tensor:
    return Tensor(dtype=tensor.dtype, shape=tensor.shape, data=b"")


def _fill(tensors: Sequence[Tensor], bulk: memoryview) -> tuple[list[Tensor], int]:
    out, offset = [], 0
    for t in tensors:
        if t.dtype not in ALLOWED_DTYPES:
            raise DecodeError(f"tensor dtype {t.dtype!r} is not allowed")
        size = math.prod(t.shape) * np.dtype(t.dtype).itemsize
        if offset + size > len(bulk):
            raise DecodeError(f"the bulk ({len(bulk)} bytes) is shorter than its tensors")
        # A view, not a copy: msgspec does not check field types on construction, and
        # numpy.frombuffer takes it as it takes bytes.
        data: Any = bulk[offset : offset + size]
        out.append(Tensor(dtype=t.dtype, shape=t.shape, data=data))
        offset += size
    return out, offset


# -- frames and their crypto ------------------------------------------------------------


def is_chunk(payload: bytes) -> bool:
    """True when ``payload`` is a chunk frame (envelopes start with a msgpack map/array)."""
    return payload[:4] == MAGIC


def frame(transfer: bytes, index: int, data: bytes) -> bytes:
    """One chunk frame (see the module docstring)."""
    return _FRAME.pack(MAGIC, transfer, index) + data


def parse_frame(payload: bytes) -> tuple[bytes, int, memoryview]:
    """(transfer id, index, data) of a chunk frame.

    Raises:
        DecodeError: not a chunk frame.
    """
    if len(payload) <= _FRAME.size or not is_chunk(payload):
        raise DecodeError("not a chunk frame")
    _, transfer, index = _FRAME.unpack_from(payload)
    return transfer, index, memoryview(payload)[_FRAME.size :]


def _aad(transfer: bytes, index: int, count: int) -> bytes:
    return b"fedbus/chunk/1\x00" + transfer + struct.pack("<II", index, count)


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "little")


def seal_chunk(key: bytes, transfer: bytes, index: int, count: int, data: bytes) -> bytes:
    """ChaCha20-Poly1305 of one chunk's plaintext (16 bytes longer)."""
    return ChaCha20Poly1305(key).encrypt(_nonce(index), data, _aad(transfer, index, count))


def open_chunk(key: bytes, transfer: bytes, index: int, count: int, data: bytes) -> bytes:
    """The inverse of ``seal_chunk``. Raises ``SealError`` for a chunk that does not open."""
    try:
        return ChaCha20Poly1305(key).decrypt(_nonce(index), data, _aad(transfer, index, count))
    except InvalidTag as exc:
        raise SealError(f"chunk {index} does not open") from exc


def open_chunk_into(
    key: bytes, transfer: bytes, index: int, count: int, data: memoryview, out: bytearray
) -> memoryview:
    """``open_chunk`` into ``out`` (at least ``len(data) - 16`` bytes, reused by the caller:
    no allocation per chunk); the plaintext, a view of ``out``. Raises ``SealError`` like
    ``open_chunk``."""
    size = len(data) - 16
    try:
        ChaCha20Poly1305(key).decrypt_into(
            _nonce(index), data, _aad(transfer, index, count), memoryview(out)[:size]
        )
    except InvalidTag as exc:
        raise SealError(f"chunk {index} does not open") from exc
    return memoryview(out)[:size]


def _write_all(fd: int, data: bytes, offset: int) -> int:
    """Write ``data`` at ``offset``; its length."""
    done = 0
    while done < len(data):
        done += os.pwrite(fd, memoryview(data)[done:], offset + done)
    return done


def _spooled(spool: IO[bytes], offsets: Sequence[int]) -> Iterator[bytes]:
    """The frames written to ``spool`` (frame ``i`` from ``offsets[i]`` to ``offsets[i+1]``),
    read back one at a time; the spool is closed once they are all read (or given up)."""
    try:
        for start, end in itertools.pairwise(offsets):
            yield os.pread(spool.fileno(), end - start, start)
    finally:
        spool.close()


def _slices(buffers: Sequence[memoryview], size: int) -> Iterator[bytes]:
    """The concatenation of ``buffers`` in pieces of ``size`` bytes (the last: the rest)."""
    pending: list[memoryview] = []
    have = 0
    for buffer in buffers:
        rest = buffer.cast("B")
        while len(rest):
            take = min(size - have, len(rest))
            pending.append(rest[:take])
            have += take
            rest = rest[take:]
            if have == size:
                yield b"".join(pending)
                pending, have = [], 0
    if have:
        yield b"".join(pending)


def build(body: Body, chunk_size: int, *, sealed: bool) -> tuple[Manifest, Iterable[bytes]]:
    """The manifest and the chunk frames of ``body``. With ``sealed`` the chunks are
    encrypted under a fresh content key, which the manifest carries (so the manifest must
    then be sealed). In the clear, the frames are cut again from the body as they are
    iterated (hashed once here), so a sender holds one chunk, not a copy of the body; the
    body must not change until they are sent. Sealed, each frame is encrypted once, here,
    and written to an unlinked spool file (disk, not memory) that the frames are read back
    from as they are iterated: encrypting every chunk again as it was sent cost the sender
    a second ChaCha20 pass on its event loop (0.7 ms per MB, measured).

    Raises:
        ValueError: more than ``MAX_CHUNKS`` chunks (see ``chunking_plan``).
    """
    header, buffers = split_body(body)
    total = sum(b.nbytes for b in buffers)
    plan = chunking_plan(total, chunk_size)
    transfer = os.urandom(16)
    key = ChaCha20Poly1305.generate_key() if sealed else None
    whole = hashlib.sha256()
    hashes = []
    spool = None if key is None else tempfile.TemporaryFile()  # noqa: SIM115 - the frames close it
    offsets = [0]
    for index, piece in enumerate(_slices(buffers, chunk_size)):
        whole.update(piece)
        data = piece if key is None else seal_chunk(key, transfer, index, plan.chunks, piece)
        hashes.append(hashlib.sha256(data).digest())
        if spool is not None:
            offsets.append(
                offsets[-1] + _write_all(spool.fileno(), frame(transfer, index, data), offsets[-1])
            )
    manifest = Manifest(
        transfer=transfer,
        kind=KIND_OF[type(body)],
        header=header,
        total_size=total,
        chunk_size=chunk_size,
        sha256=whole.hexdigest(),
        chunk_hashes=hashes,
        content_key=key,
    )
    if spool is not None:
        return manifest, _spooled(spool, offsets)
    cut = (frame(transfer, i, p) for i, p in enumerate(_slices(buffers, chunk_size)))
    return manifest, cut
