"""One round-ledger record: what a round did, signed by the aggregator (ARCHITECTURE.md §6).

A record is ``Record = [entry, cert, signature]``: ``entry`` is the canonical msgpack
encoding of an ``Entry``, ``cert`` the aggregator's certificate (DER) and ``signature`` its
ECDSA P-256 / SHA-256 signature over the entry bytes (FIPS 186-5), as in
``agent.messages.signing``. The record's hash is SHA-256 of the entry bytes; each entry names
the hash of the one before (``prev``; 32 zero bytes for the first), so the records form a
hash chain (Haber and Stornetta, "How to time-stamp a digital document", 1991).

Why the encoding is canonical: an ``Entry`` is a msgpack *array* (msgspec ``array_like``) in
a fixed field order, so there are no maps whose key order could vary; msgspec writes every
integer in its shortest form, every float as float64 and every string as UTF-8 in its
shortest length form; the lists of agent ids are sorted; the two nested settings are JSON
with sorted keys and no whitespace. One entry therefore has exactly one encoding, and
``decode_entry`` refuses any other (it re-encodes and compares), so a verifier never trusts
bytes that only *decode* to the same entry.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

import msgspec

from agent.errors import LedgerRecordError

#: the entry format this code writes and reads
VERSION = 1
#: ``prev`` of the first record
GENESIS = bytes(32)

Digest32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
Agents = Annotated[list[str], msgspec.Meta(max_length=100_000)]


class Entry(
    msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True, omit_defaults=True
):
    """What one round did, as the aggregator signs it.

    Attributes:
        version: ``VERSION``.
        index: position in the ledger, 0 for the first record (the initial model).
        prev: SHA-256 of the previous record's entry bytes (``GENESIS`` for index 0).
        run_id: the run the round belongs to.
        round: the round (0: the initial model, before round 1).
        time: when the record was made, seconds since the Unix epoch (UTC).
        cohort, survivors, dropouts: sorted agent ids of the round.
        strategy: the ``[aggregator.strategy]`` table, canonical JSON.
        secagg: the secure-aggregation mode and ``[aggregator.secagg]``, canonical JSON.
        model_version, model_sha256: the global model in force after the round (the tensor
            digest of ``agent.messages.tensors.digest``).
        config_sha256: SHA-256 of the canonical JSON of the whole ``[aggregator]`` table.
        attempt: which record of this run and round this is, 1 for the first. A round
            re-run after a crash (its first record was appended, then the aggregator died
            before the round committed) gets the next attempt, and so does the record a
            resumed incarnation makes of the model it starts from: a later attempt
            supersedes the earlier records of its round, which were never committed. Left
            out of the encoding when 1 (``omit_defaults``), so records written before the
            field existed keep their one canonical encoding.
    """

    version: int
    index: Annotated[int, msgspec.Meta(ge=0)]
    prev: Digest32
    run_id: str
    round: Annotated[int, msgspec.Meta(ge=0)]
    time: float
    cohort: Agents
    survivors: Agents
    dropouts: Agents
    strategy: str
    secagg: str
    model_version: Annotated[int, msgspec.Meta(ge=0)]
    model_sha256: str
    config_sha256: str
    attempt: Annotated[int, msgspec.Meta(ge=1)] = 1


class Record(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """A signed entry: ``[entry bytes, aggregator certificate DER, signature DER]``."""

    entry: bytes
    cert: Annotated[bytes, msgspec.Meta(max_length=4096)]
    signature: Annotated[bytes, msgspec.Meta(max_length=160)]


_encoder = msgspec.msgpack.Encoder()
_entry_decoder = msgspec.msgpack.Decoder(Entry)
_record_decoder = msgspec.msgpack.Decoder(Record)


def canonical_json(value: Any) -> str:
    """``value`` (msgspec-encodable) as JSON with sorted keys and no whitespace."""
    return msgspec.json.encode(value, order="sorted").decode()


def encode_entry(entry: Entry) -> bytes:
    """The canonical bytes of ``entry`` (see the module docstring)."""
    return _encoder.encode(entry)


def encode_record(record: Record) -> bytes:
    return _encoder.encode(record)


def record_hash(entry_bytes: bytes) -> bytes:
    """The record's hash: SHA-256 of its entry bytes, 32 bytes."""
    return hashlib.sha256(entry_bytes).digest()


def decode_record(raw: bytes) -> Record:
    """Raises: LedgerRecordError: not a record."""
    try:
        record = _record_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise LedgerRecordError(f"not a ledger record: {exc}") from exc
    if encode_record(record) != raw:
        raise LedgerRecordError("the record is not canonically encoded")
    return record


def decode_entry(raw: bytes) -> Entry:
    """The entry of ``raw``, which must be its canonical encoding.

    Raises:
        LedgerRecordError: malformed, another version, or not canonical.
    """
    try:
        entry = _entry_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise LedgerRecordError(f"not a ledger entry: {exc}") from exc
    if entry.version != VERSION:
        raise LedgerRecordError(f"ledger entry version {entry.version}, this code reads {VERSION}")
    if encode_entry(entry) != raw:
        raise LedgerRecordError("the entry is not canonically encoded")
    for agents in (entry.cohort, entry.survivors, entry.dropouts):
        if agents != sorted(agents):
            raise LedgerRecordError("the entry's agent lists are not sorted")
    return entry
