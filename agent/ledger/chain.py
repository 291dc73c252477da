"""Signing one ledger record, checking one, and checking that two follow each other.

A record is checked against the federation CA: its certificate was issued by the CA, names
an aggregator of the federation and was valid when the record was made (``Entry.time``); the
ECDSA P-256 / SHA-256 signature (FIPS 186-5) verifies over the entry bytes; the entry is
canonical (``agent.ledger.record``). Two records link when the second's ``index`` is one
more than the first's and its ``prev`` is the first's hash.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from agent.errors import IdentityError, LedgerChainError, LedgerRecordError
from agent.identity.certificates import verify_issued
from agent.ledger.record import (
    GENESIS,
    Entry,
    Record,
    decode_entry,
    decode_record,
    encode_entry,
    encode_record,
    record_hash,
)
from agent.messages.signing import Signer
from agent.role import Identity, Role


@dataclass(frozen=True, slots=True)
class Checked:
    """A record whose signature and encoding checked out.

    Attributes:
        entry: what it records.
        hash: its hash (SHA-256 of the entry bytes, 32 bytes).
        raw: the record's bytes as stored and sent.
        signer: the aggregator that signed it.
    """

    entry: Entry
    hash: bytes
    raw: bytes
    signer: Identity


def sign_entry(signer: Signer, entry: Entry) -> bytes:
    """The signed record of ``entry`` (its bytes, as stored and sent)."""
    data = encode_entry(entry)
    signature = signer.key.sign(data, ec.ECDSA(hashes.SHA256()))
    return encode_record(Record(data, signer.der, signature))


def check_record(raw: bytes, ca: x509.Certificate) -> Checked:
    """One record checked against ``ca`` (see the module docstring).

    Raises:
        LedgerRecordError: malformed or non-canonical bytes, a certificate the CA did not
            issue (or not an aggregator's, or not valid at the record's time), or a
            signature that does not verify.
    """
    record = decode_record(raw)
    entry = decode_entry(record.entry)
    try:
        cert = x509.load_der_x509_certificate(record.cert)
        at = dt.datetime.fromtimestamp(entry.time, dt.UTC)
        identity = verify_issued(ca, cert, at=at)
    except (ValueError, OverflowError, OSError) as exc:
        raise LedgerRecordError(f"unreadable signer certificate: {exc}") from exc
    except IdentityError as exc:
        raise LedgerRecordError(f"signer certificate refused ({exc.reason}): {exc}") from exc
    if identity.role is not Role.AGGREGATOR:
        raise LedgerRecordError(f"signed by a {identity.role}, not an aggregator")
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise LedgerRecordError("the signer's key is not ECDSA")
    try:
        public.verify(record.signature, record.entry, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise LedgerRecordError("the record's signature does not verify") from exc
    return Checked(entry, record_hash(record.entry), raw, identity)


def check_link(before: Checked | None, after: Checked) -> None:
    """``after`` follows ``before`` (None: ``after`` must be the first record).

    Raises:
        LedgerChainError: wrong index or previous hash.
    """
    want_index = 0 if before is None else before.entry.index + 1
    want_prev = GENESIS if before is None else before.hash
    if after.entry.index != want_index:
        raise LedgerChainError(f"record index {after.entry.index}, expected {want_index}")
    if after.entry.prev != want_prev:
        raise LedgerChainError(
            f"record {after.entry.index} does not name the hash of the record before it"
        )


def check_segment(raws: Sequence[bytes], ca: x509.Certificate) -> list[Checked]:
    """Consecutive records, each checked and each linked to the one before it.

    Raises:
        LedgerRecordError, LedgerChainError: the first record that fails.
    """
    checked: list[Checked] = []
    for raw in raws:
        record = check_record(raw, ca)
        if checked:
            check_link(checked[-1], record)
        checked.append(record)
    return checked
