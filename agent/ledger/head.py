"""The ledger head an agent holds: the newest record it accepted a model with, kept in the
trainer's state directory (``ledger_head.json``) across restarts.

Before a trainer keeps a global model (and so before it trains on it), ``LedgerHead.check``
takes the tail the ``model_para`` carries (``agent.ledger.book``) and requires that every
record verifies against the federation CA, that the records chain, that the newest names
this very model (version and sha256), and that the tail reaches the head held: it contains
it, or its first record names it as ``prev``. The first model an agent ever sees is taken on
its signature alone (trust on first use). A tail whose newest record is of *another run* and
newer than the head starts over from it (an aggregator that began a new run or a new ledger;
an older run's models, replayed, are older than the head). Any other model whose records do not
chain is refused (``LedgerChainError``, logged as ``ledger_broken``). A tail that begins
after the head held (the agent missed more than the tail's length of records) raises
``LedgerBehindError``: the trainer asks the aggregator for the records between
(``roles.trainer.catchup``) and checks again with them in front (``before``), so the
whole stretch from its head to the new model is verified and chained.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec
from cryptography import x509

from agent.atomic import write_atomic
from agent.errors import LedgerBehindError, LedgerChainError, LedgerError
from agent.ledger.chain import Checked, check_segment
from agent.ledger.record import decode_entry, decode_record

HEAD_FILE = "ledger_head.json"


class Head(msgspec.Struct, frozen=True):
    """The newest record accepted: its index, hash (hex), run id, round and time (s)."""

    index: int
    hash: str
    run_id: str
    round: int
    time: float


@dataclass(slots=True)
class LedgerHead:
    """The head held in ``path`` (read at start; an unreadable file counts as none)."""

    path: Path
    ca: x509.Certificate
    head: Head | None = None

    def __post_init__(self) -> None:
        try:
            self.head = msgspec.json.decode(self.path.read_bytes(), type=Head)
        except (OSError, msgspec.DecodeError):
            self.head = None

    def check(
        self, tail: Sequence[bytes], *, version: int, sha256: str, before: Sequence[bytes] = ()
    ) -> Checked:
        """The newest record of ``tail`` once it is checked (see the module docstring);
        ``before``: records fetched from the aggregator that come before the tail (those the
        tail repeats are left out).

        Raises:
            LedgerRecordError: a record that does not verify.
            LedgerBehindError: a tail that begins after the head held.
            LedgerChainError: no records, records that do not chain, a newest record naming
                another model, or a tail that does not reach the head held.
        """
        if not tail:
            raise LedgerChainError("the model carries no ledger record")
        if before:
            first = decode_entry(decode_record(tail[0]).entry).index
            tail = [
                *(r for r in before if decode_entry(decode_record(r).entry).index < first),
                *tail,
            ]
        checked = check_segment(tail, self.ca)
        newest = checked[-1].entry
        if newest.model_version != version or newest.model_sha256 != sha256:
            raise LedgerChainError(
                f"the newest record names model {newest.model_version}, not {version}"
            )
        head = self.head
        if head is None:
            return checked[-1]
        held = bytes.fromhex(head.hash)
        if any(c.hash == held for c in checked) or checked[0].entry.prev == held:
            return checked[-1]
        if newest.run_id != head.run_id and newest.time > head.time:
            return checked[-1]  # a newer run: it starts over from here
        if checked[0].entry.index > head.index + 1:
            raise LedgerBehindError(
                f"the records begin at {checked[0].entry.index}, after the ledger head "
                f"{head.index} held"
            )
        raise LedgerChainError(
            f"the records {checked[0].entry.index}..{newest.index} do not reach the ledger "
            f"head {head.index} held"
        )

    def advance(self, record: Checked) -> None:
        """Hold ``record`` as the head (persisted). Raises: OSError."""
        entry = record.entry
        if self.head is not None and self.head.hash == record.hash.hex():
            return
        self.head = Head(entry.index, record.hash.hex(), entry.run_id, entry.round, entry.time)
        write_atomic(self.path, msgspec.json.encode(self.head))


__all__ = ["HEAD_FILE", "Head", "LedgerError", "LedgerHead"]
