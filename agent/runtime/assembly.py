"""One chunked transfer (``agent.runtime.reassembly``) and its rebuilding once complete: its
spool read back in order (opened when sealed) into the body it carries."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

import msgspec

from agent.errors import ChunkError, DecodeError
from agent.mapped import AVAILABLE, file_size, map_file
from agent.messages.bodies import Body, Manifest
from agent.messages.chunks import join_body, open_chunk
from agent.messages.codec import validate_body
from agent.messages.envelope import Envelope, Message
from agent.messages.kinds import Kind
from agent.role import Identity

#: Kinds rebuilt as views of their spool file (``agent.mapped``), not read into memory: the
#: aggregator passes over a plain update and folds it (``roles.aggregator.fold``), holding
#: about one array of it at a time.
MAPPED = frozenset({Kind.MODEL_UPDATE})


def opened_on_arrival(manifest: Manifest) -> bool:
    """Whether a transfer's sealed chunks are opened as they are kept, their plaintext
    spooled at ``index * chunk_size`` (``Reassembly.add``): a ``MAPPED`` kind's, so its
    spool is the bulk itself once complete and a ``ChunkSink`` can read each chunk's values
    as soon as it is kept."""
    return AVAILABLE and manifest.kind in MAPPED and manifest.total_size > 0


class ChunkSink(Protocol):
    """Told of each chunk of one transfer as it is kept (``Transfer.sink``), in the
    receiving thread: it must return at once (e.g. queue the work), and must not raise."""

    def kept(self, transfer: Transfer, index: int) -> None:
        """Chunk ``index`` is in the spool: its plaintext at ``index * chunk_size`` when
        ``opened_on_arrival``."""


@dataclass(eq=False, slots=True)
class Transfer:
    """One open transfer: its manifest (and the checked envelope it came in), its spool."""

    topic: str
    manifest: Manifest
    envelope: Envelope
    identity: Identity | None
    deadline: float
    spool: IO[bytes]
    received: bytearray = field(init=False)
    missing: int = field(init=False)
    #: chunks its sender was last told it may send (with flow control: ``Reassembly.due``)
    grant: int = 0
    #: told of each kept chunk (set by the receiver's ``StreamHook``; None: nobody)
    sink: ChunkSink | None = None

    def __post_init__(self) -> None:
        self.received = bytearray(len(self.manifest.chunk_hashes))
        self.missing = len(self.received)

    @property
    def key(self) -> tuple[str, bytes]:
        return self.topic, self.manifest.transfer

    @property
    def sender(self) -> str:
        return self.envelope.sender

    def close(self) -> None:
        self.spool.close()


def stride(manifest: Manifest) -> int:
    """Bytes of one full chunk's data on the wire: a sealed chunk carries its 16-byte tag.
    Also its slot in the spool, unless it is opened on arrival (``opened_on_arrival``: its
    plaintext goes to ``index * chunk_size``)."""
    return manifest.chunk_size + (16 if manifest.content_key is not None else 0)


def assemble(transfer: Transfer) -> Body:
    """The body a complete transfer carries: every chunk read back in order (and opened,
    when sealed), the body rebuilt around it (``chunks.join_body``; the caller validates it
    like any decoded body). Closes the spool. A body of a ``MAPPED`` kind is a view of its
    spool file instead (``agent.mapped``): its sealed chunks were opened as they were kept
    (``opened_on_arrival``), and its tensors are read-only views of the mapping.

    The manifest's whole-message SHA-256 is not computed again here: every chunk was kept
    only once its SHA-256 matched the signed manifest's hash for its index, and the chunk
    sizes are fixed by the manifest, so the bulk is already pinned byte for byte (a second
    hash of the whole would be one more pass over the model for nothing).

    Raises:
        ChunkError: a chunk short in the spool, or a sealed chunk that does not open
            (``SealError`` is a ``ProtocolError`` too).
        DecodeError: a header that does not fit the bulk.
    """
    manifest = transfer.manifest
    if opened_on_arrival(manifest):
        try:
            view = _mapped(transfer)
        finally:
            transfer.close()
        return _joined(manifest, view)
    bulk = bytearray(manifest.total_size)
    view = memoryview(bulk)
    step, count = stride(manifest), len(manifest.chunk_hashes)
    try:
        fd = transfer.spool.fileno()
        for index in range(count):
            start = index * manifest.chunk_size
            size = min(manifest.chunk_size, manifest.total_size - start)
            if manifest.content_key is None:
                got = os.preadv(fd, [view[start : start + size]], index * step)
                if got != size:
                    raise ChunkError(f"chunk {index} is short in the spool")
            else:
                sealed = os.pread(fd, size + 16, index * step)
                view[start : start + size] = open_chunk(
                    manifest.content_key, manifest.transfer, index, count, sealed
                )
    finally:
        transfer.close()
    return _joined(manifest, view)


def _mapped(transfer: Transfer) -> memoryview:
    """The bulk of a complete transfer as a read-only mapping of its spool (its chunks'
    plaintext, ``opened_on_arrival``)."""
    manifest = transfer.manifest
    fd = transfer.spool.fileno()
    if file_size(fd) < manifest.total_size:  # a read past the file's end would be a SIGBUS
        raise ChunkError("a chunk is short in the spool")
    return map_file(fd, manifest.total_size)


def _joined(manifest: Manifest, view: memoryview) -> Body:
    try:
        return join_body(manifest.kind, manifest.header, view)
    except DecodeError:
        raise
    except Exception as exc:  # a header that decodes to something join_body cannot fill
        raise DecodeError(f"bad chunked {manifest.kind} body: {exc!r}") from exc


def rebuild(transfer: Transfer) -> Message[Any]:
    """The message a complete transfer carries: its body assembled and validated like any
    decoded body (``codec.validate_body``), under the manifest's envelope with the carried
    kind. Raises what ``assemble`` and ``validate_body`` raise (``ProtocolError``s)."""
    body = validate_body(assemble(transfer))
    kind = transfer.manifest.kind
    envelope = msgspec.structs.replace(transfer.envelope, kind=kind, body=b"", sealed=False)
    return Message(envelope, body, transfer.topic, transfer.identity)
