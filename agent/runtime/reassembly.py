"""Reassembly of chunked messages (``agent.messages.chunks``), bounded in bytes and time.

The receive pipeline (``agent.runtime.listeners``) hands a manifest that passed every check
of an ordinary message (signature, sealing, topic, round) to ``Reassembly.begin``, and every
chunk frame to ``Reassembly.add``. A transfer is keyed by (topic, transfer id), so a chunk
counts only on the topic its manifest came on: on a per-agent topic, only its agent's.

- **Each chunk is checked before it is kept**: its index must be in range and the SHA-256 of
  its data must equal the manifest's hash for that index (``chunk_mismatch`` otherwise).
  Chunks may come in any order; a repeat of a kept chunk is ignored.
- **Kept chunks go to disk, not memory**: each transfer spools into an unlinked temporary
  file (``tempfile.TemporaryFile``, mode 0600, gone with the process), written at the chunk's
  offset. Ciphertext stays ciphertext until ``assemble``. So a receiver's memory does not grow
  with the number of senders transferring at once; only the message being assembled is held.
- **Bounded**: a manifest announcing more than ``max_message`` bytes, or more than the
  ``budget`` left by the transfers already open, is refused (``over_budget``); each topic
  has at most one open transfer (a newer manifest supersedes the older one, ``superseded``).
- **Timed**: a transfer not complete ``timeout`` seconds after its manifest is dropped
  (``transfer_timeout``) at the next ``expire``: a missing chunk never makes anyone wait
  longer than that, and the round's own deadline counts the sender as a dropout.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec
import structlog

from agent.errors import (
    ChunkError,
    ChunkMismatchError,
    DecodeError,
    OverBudgetError,
    SupersededError,
    TransferTimeoutError,
    UnknownTransferError,
)
from agent.messages.bodies import Body, Manifest
from agent.messages.chunks import join_body, open_chunk, parse_frame
from agent.messages.codec import validate_body
from agent.messages.envelope import Envelope, Message
from agent.messages.transfer import TransferConfig
from agent.role import Identity

log = structlog.get_logger(__name__)

#: How many completed transfers are remembered (to ignore their duplicate chunks).
DONE_MEMORY = 256
#: Called for each transfer dropped without a message in hand: (topic, reason, detail).
DropNote = Callable[[str, str, str], None]


@dataclass(frozen=True, slots=True)
class Limits:
    """What one receiver holds in unfinished transfers.

    Attributes:
        max_message: largest bulk (bytes) one manifest may announce.
        budget: bytes all open transfers together may announce.
        timeout: seconds from a manifest to its last chunk.
        spool_dir: where the spool files go (None: the system's temporary directory).
    """

    max_message: int = 4 << 30
    budget: int = 8 << 30
    timeout: float = 300.0
    spool_dir: Path | None = None

    @classmethod
    def of(cls, config: TransferConfig) -> Limits:
        """The limits a ``[transfer]`` table sets."""
        return cls(config.max_message, config.budget, config.timeout, config.spool_dir)


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


class Reassembly:
    """The open transfers of one receiver (see the module docstring)."""

    def __init__(self, limits: Limits | None = None, *, on_drop: DropNote | None = None) -> None:
        self.limits = Limits() if limits is None else limits
        self._on_drop = on_drop
        self._open: dict[tuple[str, bytes], Transfer] = {}
        self._by_topic: dict[str, Transfer] = {}
        #: recently completed transfers, whose late duplicate chunks are ignored quietly
        self._done: deque[tuple[str, bytes]] = deque(maxlen=DONE_MEMORY)

    @property
    def open_bytes(self) -> int:
        """Bytes announced by the open transfers (what the budget is charged)."""
        return sum(t.manifest.total_size for t in self._open.values())

    def __len__(self) -> int:
        return len(self._open)

    def begin(
        self,
        topic: str,
        envelope: Envelope,
        manifest: Manifest,
        identity: Identity | None = None,
        *,
        now: float | None = None,
    ) -> Transfer:
        """Open a transfer for a checked ``manifest`` that came on ``topic``.

        Raises:
            ChunkMismatchError: a manifest whose chunk count does not fit its sizes.
            OverBudgetError: more than ``max_message``, or than the budget has left.
        """
        now = time.monotonic() if now is None else now
        self.expire(now)
        count = -(-manifest.total_size // manifest.chunk_size)
        if count != len(manifest.chunk_hashes):
            raise ChunkMismatchError(
                f"{len(manifest.chunk_hashes)} chunk hashes for {manifest.total_size} bytes "
                f"in chunks of {manifest.chunk_size}"
            )
        limits = self.limits
        if manifest.total_size > limits.max_message:
            raise OverBudgetError(
                f"{manifest.total_size} bytes announced; this receiver takes at most "
                f"{limits.max_message} ([transfer] max_message)"
            )
        previous = self._by_topic.get(topic)
        if previous is not None:
            self._drop(previous, SupersededError.reason, "a newer manifest on its topic")
        left = limits.budget - self.open_bytes
        if manifest.total_size > left:
            raise OverBudgetError(
                f"{manifest.total_size} bytes announced, {left} left of the reassembly budget "
                f"([transfer] budget = {limits.budget})"
            )
        spool_dir = None if limits.spool_dir is None else str(limits.spool_dir)
        transfer = Transfer(
            topic,
            manifest,
            envelope,
            identity,
            now + limits.timeout,
            tempfile.TemporaryFile(dir=spool_dir),  # noqa: SIM115 - closed with the transfer
        )
        self._open[transfer.key] = transfer
        self._by_topic[topic] = transfer
        log.debug(
            "transfer_started",
            topic=topic,
            sender=envelope.sender,
            kind=str(manifest.kind),
            size=manifest.total_size,
            chunks=count,
        )
        return transfer

    def add(self, topic: str, payload: bytes, *, now: float | None = None) -> Transfer | None:
        """Keep one chunk frame that came on ``topic``; its transfer, or None when the chunk
        was a duplicate. Once ``transfer.missing`` is 0 the transfer is complete and no longer
        open: the caller ``assemble``s (which closes it) or ``close``s it.

        Raises:
            DecodeError: not a chunk frame.
            UnknownTransferError: no transfer with its id is open on ``topic``.
            ChunkMismatchError: an index out of range or data not matching its hash.
        """
        now = time.monotonic() if now is None else now
        transfer_id, index, data = parse_frame(payload)
        transfer = self._open.get((topic, transfer_id))
        if transfer is None and (topic, transfer_id) in self._done:
            return None  # a duplicate of a chunk of a message already delivered
        if transfer is None or now > transfer.deadline:
            self.expire(now)
            raise UnknownTransferError(f"no open transfer {transfer_id.hex()} on {topic}")
        manifest = transfer.manifest
        if index >= len(manifest.chunk_hashes):
            raise ChunkMismatchError(f"chunk {index} of {len(manifest.chunk_hashes)}")
        if transfer.received[index]:
            return None  # a duplicate of a chunk already kept
        want = (
            _stride(manifest)
            - manifest.chunk_size
            + min(manifest.chunk_size, manifest.total_size - index * manifest.chunk_size)
        )
        if len(data) != want:
            raise ChunkMismatchError(f"chunk {index} holds {len(data)} bytes, not {want}")
        if hashlib.sha256(data).digest() != manifest.chunk_hashes[index]:
            raise ChunkMismatchError(f"chunk {index} does not match its manifest hash")
        os.pwrite(transfer.spool.fileno(), data, index * _stride(manifest))
        transfer.received[index] = 1
        transfer.missing -= 1
        if transfer.missing:
            return transfer
        self._forget(transfer)
        self._done.append(transfer.key)
        return transfer

    def expire(self, now: float | None = None) -> None:
        """Drop every transfer past its deadline (``transfer_timeout``)."""
        now = time.monotonic() if now is None else now
        for transfer in [t for t in self._open.values() if now > t.deadline]:
            missing = transfer.missing
            self._drop(transfer, TransferTimeoutError.reason, f"{missing} chunks never came")

    def close(self) -> None:
        """Drop every open transfer (the receiver stops)."""
        for transfer in list(self._open.values()):
            self._forget(transfer)
            transfer.close()

    def _drop(self, transfer: Transfer, reason: str, detail: str) -> None:
        self._forget(transfer)
        transfer.close()
        log.warning(
            "message_dropped",
            reason=reason,
            topic=transfer.topic,
            sender=transfer.sender,
            kind=str(transfer.manifest.kind),
            size=transfer.manifest.total_size,
            detail=detail,
        )
        if self._on_drop is not None:
            self._on_drop(transfer.topic, reason, detail)

    def _forget(self, transfer: Transfer) -> None:
        self._open.pop(transfer.key, None)
        if self._by_topic.get(transfer.topic) is transfer:
            del self._by_topic[transfer.topic]


def _stride(manifest: Manifest) -> int:
    """Spool bytes per chunk slot: a sealed chunk carries its 16-byte tag."""
    return manifest.chunk_size + (16 if manifest.content_key is not None else 0)


def assemble(transfer: Transfer) -> Body:
    """The body a complete transfer carries: every chunk read back in order (and opened,
    when sealed), the body rebuilt around it (``chunks.join_body``; the caller validates it
    like any decoded body). Closes the spool.

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
    bulk = bytearray(manifest.total_size)
    view = memoryview(bulk)
    stride, count = _stride(manifest), len(manifest.chunk_hashes)
    try:
        fd = transfer.spool.fileno()
        for index in range(count):
            start = index * manifest.chunk_size
            size = min(manifest.chunk_size, manifest.total_size - start)
            if manifest.content_key is None:
                got = os.preadv(fd, [view[start : start + size]], index * stride)
                if got != size:
                    raise ChunkError(f"chunk {index} is short in the spool")
            else:
                sealed = os.pread(fd, size + 16, index * stride)
                view[start : start + size] = open_chunk(
                    manifest.content_key, manifest.transfer, index, count, sealed
                )
    finally:
        transfer.close()
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
