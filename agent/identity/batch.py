"""Enrollments in batches: the requests that arrive together redeemed, signed and recorded in
one registry transaction, so one fsync serves them all.

Enrolling one device writes twice (its token used up, its certificate recorded), each an
fsync of SQLite's WAL (``synchronous=FULL``): about 12 ms, and the enrollment service did
them one request at a time, so 1,000 devices took 36-89 s to enroll (issue 15). Here the
service hands every request to ``EnrollBatcher.enroll``; one worker thread takes whatever is
queued when it is free and runs ``enroll_batch`` over it.

Each request still gets every check of a single enrollment, in the same order, and its own
outcome: a bad, used, expired or foreign token, a bad CSR or a registry conflict fails that
request only. Single use holds as before: ``tokens.redeem`` ends with ``UPDATE … WHERE
used_at IS NULL``, inside the batch's ``BEGIN IMMEDIATE`` (which excludes every other
writer, thread or process), and a second request with the same token in the same batch sees
the first one's update. The token is redeemed before its certificate is signed, and no
certificate leaves before the transaction that used its token committed: if the commit
fails, every request of the batch fails with that error.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog
from cryptography import x509

from agent.errors import IdentityError
from agent.identity import records, tokens
from agent.identity.certificates import identity_of
from agent.identity.registry import Registry
from agent.identity.store import to_unix
from agent.role import Role

log = structlog.get_logger(__name__)

#: Most requests in one transaction.
MAX_BATCH = 256


@dataclass(frozen=True, slots=True)
class Pending:
    """One enrollment request, its CSR parsed."""

    agent_id: str
    token: str
    csr: x509.CertificateSigningRequest

    def __repr__(self) -> str:  # the token is a secret: never in a log or an error
        return f"Pending(agent_id={self.agent_id!r})"


#: What one request came to: its certificate and the serials it superseded, or why not.
Outcome = tuple[x509.Certificate, list[int]] | Exception
#: Signs one request's CSR (``agent.identity.ca.sign_csr`` with the CA and its validity).
Sign = Callable[[Pending], x509.Certificate]


def enroll_batch(
    registry: Registry, batch: Sequence[Pending], sign: Sign, *, now: dt.datetime | None = None
) -> list[Outcome]:
    """Enroll every request of ``batch`` in one transaction; outcomes in ``batch``'s order.

    Per request, in order: the agent id must not be a non-trainer's; its token is redeemed
    (``tokens.redeem``); its CSR is signed; the certificate is recorded (``records.record``).
    A refusal (``IdentityError``) or a failed signature leaves that request's outcome an
    exception and the other requests go on; a token redeemed before its CSR was refused
    stays used, as for a single enrollment.

    Raises:
        sqlite3.Error: the transaction failed (nothing of the batch was kept).
    """
    when = to_unix(now)
    outcomes: list[Outcome] = []
    with registry.transaction() as db:
        for request in batch:
            try:
                _trainer_only(db, request.agent_id)
                tokens.redeem(db, request.token, request.agent_id, when=when)
                cert = sign(request)
                db.execute("SAVEPOINT enroll_one")
                try:
                    superseded = records.record(db, identity_of(cert), cert, when=when)
                except BaseException:
                    db.execute("ROLLBACK TO enroll_one")
                    raise
                finally:
                    db.execute("RELEASE enroll_one")
            except Exception as exc:  # noqa: BLE001 - this request's outcome, not the batch's
                outcomes.append(exc)
            else:
                outcomes.append((cert, superseded))
    return outcomes


def _trainer_only(db: sqlite3.Connection, agent_id: str) -> None:
    """Raises IdentityError ``role_conflict`` when ``agent_id`` is registered as another
    role than trainer (a device can never take over the aggregator's id)."""
    row = db.execute("SELECT role FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
    if row is not None and row[0] != str(Role.TRAINER):
        raise IdentityError("role_conflict", f"{agent_id!r} is not a trainer's id")


@dataclass(eq=False)
class EnrollBatcher:
    """Queues enrollment requests and runs them through ``enroll_batch`` in a worker thread,
    one batch at a time (at most ``max_batch`` requests each). Run ``run()`` in a task while
    ``enroll`` is awaited.

    Attributes:
        batches: sizes of the batches run so far (for logs and tests).
    """

    registry: Registry
    sign: Sign
    max_batch: int = MAX_BATCH
    batches: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._queue: list[tuple[Pending, asyncio.Future[tuple[x509.Certificate, list[int]]]]] = []
        self._wake = asyncio.Event()

    async def enroll(self, request: Pending) -> tuple[x509.Certificate, list[int]]:
        """``request``'s certificate and the serials it superseded, once its batch ran.

        Raises:
            IdentityError: this request was refused (reason as ``Registry.redeem_token``,
                ``sign_csr``, ``Registry.record_enrollment``); or whatever else failed it.
        """
        future: asyncio.Future[tuple[x509.Certificate, list[int]]]
        future = asyncio.get_running_loop().create_future()
        self._queue.append((request, future))
        self._wake.set()
        return await future

    async def run(self) -> None:
        """Run batches until cancelled."""
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue:
                    taken = self._queue[: self.max_batch]
                    del self._queue[: self.max_batch]
                    await self._run_one(taken)
        finally:  # no request waits for a batcher that is gone
            for _, future in self._queue:
                future.cancel()
            self._queue.clear()

    async def _run_one(
        self, taken: list[tuple[Pending, asyncio.Future[tuple[x509.Certificate, list[int]]]]]
    ) -> None:
        self.batches.append(len(taken))
        try:
            outcomes = await asyncio.to_thread(
                enroll_batch, self.registry, [r for r, _ in taken], self.sign
            )
        except asyncio.CancelledError:
            for _, future in taken:
                future.cancel()
            raise
        except Exception as exc:  # the whole batch failed: each request says so
            log.exception("enrollment_batch_failed", requests=len(taken))
            outcomes = [exc] * len(taken)
        for (_, future), outcome in zip(taken, outcomes, strict=True):
            if future.done():  # its request was cancelled meanwhile
                continue
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
