"""The aggregator's side of the ledger: append one signed record per round.

``RoundLedger.append`` is called once per round (and once for the initial model, round 0),
after the round's cohort, survivors and new model are known and before the model is
published; it returns the *tail* that the ``model_para`` carries: the last ``TAIL`` records
(at most ``TAIL_BYTES``, always the newest), ending with the new one, so an agent that
missed a few models (a failed round publishes none) still finds the head it holds and
checks the chain up to the new record. The cost is on every model message: about 1 KB per
record for a cohort of 10, 3 KB for 100, 23 KB for 1000 (``bench/ledger.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import msgspec
import structlog
from cryptography import x509

from agent.config import AggregatorConfig
from agent.errors import ConfigError, LedgerRecordError
from agent.ledger.chain import check_record, sign_entry
from agent.ledger.record import (
    GENESIS,
    VERSION,
    Entry,
    canonical_json,
    decode_entry,
    decode_record,
    record_hash,
)
from agent.ledger.store import LedgerStore, ledger_dir
from agent.messages.signing import Signer
from agent.runtime.tasks import finish_in_thread

log = structlog.get_logger(__name__)

#: records a model message carries (the newest last)
TAIL = 8
#: bytes a tail may take (the newest record always goes)
TAIL_BYTES = 256 * 1024


def config_digest(config: AggregatorConfig) -> str:
    """SHA-256 (hex) of the canonical JSON of the ``[aggregator]`` table."""
    return hashlib.sha256(canonical_json(msgspec.to_builtins(config)).encode()).hexdigest()


class RoundLedger:
    """The ledger under ``state_dir/ledger``, continued where it ends (a restarted
    aggregator resumes the chain).

    Args:
        state_dir: the aggregator's state directory.
        signer: the aggregator's key and certificate.
        config: the ``[aggregator]`` table (strategy, SecAgg+ and config digest).
        run_id: the run's id (default: a new random one, 32 hex digits).
        ca: the federation's CA: the newest records (the tail every model message carries)
            must verify against it, or no agent would take a model (None: not checked).

    Raises:
        OSError, LedgerRecordError: an existing ledger that cannot be read.
        ConfigError: its newest records do not verify against ``ca`` (a state_dir left by
            another federation or CA).
    """

    def __init__(
        self,
        state_dir: Path,
        signer: Signer,
        config: AggregatorConfig,
        run_id: str | None = None,
        *,
        ca: x509.Certificate | None = None,
    ) -> None:
        self._store = LedgerStore(ledger_dir(state_dir))
        #: signs the records from now on (a renewed certificate replaces it)
        self.signer = signer
        self._strategy = canonical_json(config.strategy)
        secagg = {"mode": str(config.secure_aggregation), **msgspec.to_builtins(config.secagg)}
        self._secagg = canonical_json(secagg)
        self._config_sha256 = config_digest(config)
        files = self._store.files()
        self._tail: list[bytes] = [self._store.read(p) for _, p in files[-TAIL:]]
        if ca is not None:
            self._check_tail(ca)
        last = decode_entry(decode_record(self._tail[-1]).entry) if self._tail else None
        self._next = 0 if last is None else last.index + 1
        self._prev = GENESIS if last is None else record_hash(decode_record(self._tail[-1]).entry)
        self.run_id = run_id or uuid.uuid4().hex
        #: records of this run so far, by round (a resumed run's earlier attempts)
        self._attempts = self._count_attempts(files) if run_id else {}

    def _check_tail(self, ca: x509.Certificate) -> None:
        """Every record of the tail verifies against ``ca`` (``ConfigError`` if not)."""
        for raw in self._tail:
            try:
                check_record(raw, ca)
            except LedgerRecordError as exc:
                where = self._store.directory
                raise ConfigError(
                    f"the ledger in {where} does not verify against this aggregator's CA "
                    f"({exc}): the state_dir holds another federation's (or CA's) records, "
                    "and every agent would refuse this aggregator's models; give the "
                    f"aggregator a new state_dir, or move {where.parent} away"
                ) from exc

    def _count_attempts(self, files: list[tuple[int, Path]]) -> dict[int, int]:
        """How many records each round of this run has, read from the newest back while
        the records are this run's (its records are contiguous: one run at a time)."""
        counts: dict[int, int] = {}
        for _, path in reversed(files):
            entry = decode_entry(decode_record(self._store.read(path)).entry)
            if entry.run_id != self.run_id:
                break
            counts[entry.round] = max(counts.get(entry.round, 0), entry.attempt)
        return counts

    @property
    def tail(self) -> tuple[bytes, ...]:
        """The newest records, oldest first (what a model message carries)."""
        kept: list[bytes] = []
        size = 0
        for raw in reversed(self._tail):
            size += len(raw)
            if kept and size > TAIL_BYTES:
                break
            kept.append(raw)
        return tuple(reversed(kept))

    async def append(
        self,
        *,
        round: int,
        cohort: Sequence[str],
        survivors: Sequence[str],
        dropouts: Sequence[str],
        model_version: int,
        model_sha256: str,
    ) -> tuple[bytes, ...]:
        """Sign and store the record of ``round``; returns the new tail. A round this run
        already recorded (re-run after a crash, or restated on resume) gets the next
        ``Entry.attempt``, which supersedes the earlier record.

        Raises:
            OSError: the record cannot be written (the round must not be published).
        """
        entry = Entry(
            version=VERSION,
            index=self._next,
            prev=self._prev,
            run_id=self.run_id,
            round=round,
            time=time.time(),
            cohort=sorted(cohort),
            survivors=sorted(survivors),
            dropouts=sorted(dropouts),
            strategy=self._strategy,
            secagg=self._secagg,
            model_version=model_version,
            model_sha256=model_sha256,
            config_sha256=self._config_sha256,
            attempt=self._attempts.get(round, 0) + 1,
        )
        raw = await asyncio.to_thread(sign_entry, self.signer, entry)
        await finish_in_thread(self._store.write, entry.index, raw)  # a stop waits for it
        self._tail = [*self._tail[-(TAIL - 1) :], raw]
        self._next += 1
        self._attempts[round] = entry.attempt
        self._prev = record_hash(decode_record(raw).entry)
        log.info(
            "ledger_appended",
            index=entry.index,
            round=round,
            attempt=entry.attempt,
            hash=self._prev.hex()[:12],
        )
        return self.tail

    def records_after(self, index: int, *, limit: int, max_bytes: int) -> tuple[list[bytes], bool]:
        """The stored records after ``index``, oldest first: at most ``limit`` and about
        ``max_bytes`` (always one, if any); and whether more follow. Raises: OSError."""
        files = [(i, p) for i, p in self._store.files() if i > index]
        records: list[bytes] = []
        size = 0
        for _, path in files[:limit]:
            raw = self._store.read(path)
            if records and size + len(raw) > max_bytes:
                break
            records.append(raw)
            size += len(raw)
        return records, len(records) < len(files)
