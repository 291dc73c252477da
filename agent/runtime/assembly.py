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


def is_mapped(manifest: Manifest) -> bool:
    """Whether the transfer of ``manifest`` is rebuilt as a mapping of its spool (a
    ``MAPPED`` kind, where ``agent.mapped`` is available): the transfers a ``ChunkSink``
    may take."""
    return AVAILABLE and manifest.kind in MAPPED and manifest.total_size > 0


class ChunkSink(Protocol):
    """Takes one transfer's chunks as they are kept (``Transfer.sink``; only where
    ``is_mapped``) and spools them itself: each chunk's plaintext (opened, when sealed) at
    ``index * chunk_size`` of the transfer's spool, by ``flush``."""

    def kept(self, transfer: Transfer, index: int, data: memoryview) -> None:
        """Chunk ``index`` (``data``: as it came, checked against the manifest) is in; called
        in the receiving thread, which it may hold up (backpressure), but must not raise."""

    def flush(self, transfer: Transfer) -> None:
        """Block until every chunk is in the spool (``transfer`` is complete).

        Raises:
            ProtocolError: a chunk that could not be spooled (``SealError``: it did not
                open; ``ChunkError``: it was not written).
        """


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
    #: takes its chunks and spools them (set by the receiver's ``StreamHook``; None:
    #: ``Reassembly`` spools them)
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
    """Spool bytes per chunk slot: a sealed chunk carries its 16-byte tag."""
    return manifest.chunk_size + (16 if manifest.content_key is not None else 0)


def assemble(transfer: Transfer) -> Body:
    """The body a complete transfer carries: every chunk read back in order (and opened,
    when sealed), the body rebuilt around it (``chunks.join_body``; the caller validates it
    like any decoded body). Closes the spool. A body of a ``MAPPED`` kind is a view of its
    spool file instead (``agent.mapped``): sealed chunks are opened into the file in place
    (or were opened by its ``sink`` as they came), and its tensors are read-only views of
    the mapping.

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
    if is_mapped(manifest):
        try:
            if transfer.sink is not None:
                transfer.sink.flush(transfer)
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
    """The bulk of a complete transfer as a read-only mapping of its spool; a sealed
    spool's chunks are first opened in place, in index order: plaintext ``i`` goes to
    ``i * chunk_size``, below ciphertext ``i + 1`` (at ``(i + 1) * (chunk_size + 16)``), so
    no chunk is overwritten before it is read."""
    manifest = transfer.manifest
    fd, count = transfer.spool.fileno(), len(manifest.chunk_hashes)
    if manifest.content_key is not None and transfer.sink is None:
        step = stride(manifest)
        for index in range(count):
            start = index * manifest.chunk_size
            size = min(manifest.chunk_size, manifest.total_size - start)
            sealed = os.pread(fd, size + 16, index * step)
            plain = open_chunk(manifest.content_key, manifest.transfer, index, count, sealed)
            if os.pwrite(fd, plain, start) != len(plain):
                raise ChunkError(f"chunk {index} could not be opened into the spool")
        os.ftruncate(fd, manifest.total_size)
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
