"""A whole ledger checked offline (``fedbus ledger verify STATE_DIR --ca CA.pem``).

Every record file under ``state_dir/ledger`` is read in index order and checked
(``agent.ledger.chain``): the file names must run 0, 1, 2, … with no gap (a dropped record),
each record must verify against the CA and be canonical (a tampered byte), and must carry
the index its file name gives and the hash of the record before it (reordered or dropped
records), and each record's ``attempt`` must be one more than the records of its run and
round before it (a round re-run after a crash says so, ``Entry.attempt``; ``superseded``
counts the records a later attempt replaced). The first record that fails is named, with
the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from agent.errors import LedgerChainError, LedgerError
from agent.ledger.chain import Checked, check_link, check_record
from agent.ledger.store import LedgerStore, ledger_dir


@dataclass(frozen=True, slots=True)
class Verdict:
    """What ``verify_ledger`` found.

    Attributes:
        records: records that checked out, from the first on (before any bad one).
        head: the last good record (None: none).
        bad: the first bad record's file (None: the whole ledger checked out).
        reason, detail: why it is bad (``LedgerError.reason`` and its message).
        superseded: good records a later attempt of their run and round replaced.
    """

    records: int
    head: Checked | None
    bad: Path | None = None
    reason: str = ""
    detail: str = ""
    superseded: int = 0

    @property
    def ok(self) -> bool:
        return self.bad is None


def verify_ledger(state_dir: Path, ca: x509.Certificate) -> Verdict:
    """Check every record of the ledger of ``state_dir`` (see the module docstring).

    An empty or missing ledger is not ok (``reason = "ledger_missing"``).

    Raises:
        OSError: a record file that cannot be read.
    """
    directory = ledger_dir(state_dir)
    files = LedgerStore(directory).files()
    if not files:
        return Verdict(0, None, directory, "ledger_missing", f"no records in {directory}")
    before: Checked | None = None
    attempts: dict[tuple[str, int], int] = {}
    superseded = 0
    for count, (index, path) in enumerate(files):
        try:
            if index != count:
                raise LedgerChainError(f"record {count} is missing (next file is {path.name})")
            record = check_record(path.read_bytes(), ca)
            if record.entry.index != index:
                raise LedgerChainError(f"{path.name} holds record {record.entry.index}")
            check_link(before, record)
            entry = record.entry
            seen = attempts.get((entry.run_id, entry.round), 0)
            if entry.attempt != seen + 1:
                raise LedgerChainError(
                    f"{path.name} is attempt {entry.attempt} of round {entry.round}, "
                    f"which has {seen} record(s) before it in this run"
                )
            attempts[(entry.run_id, entry.round)] = entry.attempt
            superseded += seen > 0
        except LedgerError as exc:
            return Verdict(count, before, path, exc.reason, str(exc), superseded)
        before = record
    return Verdict(len(files), before, superseded=superseded)
