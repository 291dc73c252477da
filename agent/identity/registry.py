"""The aggregator's registry: enrolled agents, their certificates, one-time tokens.

One SQLite file, by default ``CA_DIR/registry.sqlite`` beside the CA (``fedbus ca init``
creates both); its tables and storage formats are in ``agent.identity.store``, the tokens in
``agent.identity.tokens``. When an agent enrolls again its previous certificate is revoked
("superseded"), so a lost or stolen old key stops working, and every revoked serial stays in
the CRL (``revoked_serials``).

Trust decisions (``is_revoked``): a certificate is revoked when its serial was revoked
(``fedbus revoke``) or superseded by a re-enrollment, when its agent is revoked, or when its
agent is registered with a *different* current serial that the registry never recorded (a
certificate the registry does not know for a known agent is not trusted). An agent id the
registry has never seen is not "revoked" (``cert_status`` says ``unknown_agent``); whether
to admit it is the caller's policy.

Every method is safe to call from several threads on one ``Registry`` (a lock serialises
them), and several processes may open the same file (SQLite's own locking; writers wait up
to ``agent.identity.store.BUSY_TIMEOUT`` seconds).
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Self

from cryptography import x509

from agent.errors import IdentityError
from agent.identity import records, store, tokens
from agent.identity.store import from_unix, to_unix
from agent.role import Identity, Role

#: The registry's file name in a CA directory.
REGISTRY_FILE = "registry.sqlite"
#: The certificate revocation list's file name in a CA directory (what brokers load).
CRL_FILE = "crl.pem"


class AgentStatus(StrEnum):
    ENROLLED = "enrolled"
    REVOKED = "revoked"


class CertStatus(StrEnum):
    """What the registry says about one (agent id, certificate serial) pair."""

    CURRENT = "current"  # the agent's registered, unrevoked certificate
    REVOKED = "revoked"  # revoked by ``revoke`` (or the agent is revoked)
    SUPERSEDED = "superseded"  # an older certificate of an agent that enrolled again
    UNKNOWN_SERIAL = "unknown_serial"  # a known agent, a serial the registry never recorded
    UNKNOWN_AGENT = "unknown_agent"  # an agent id the registry has never seen


#: The statuses ``is_revoked`` answers True for.
UNTRUSTED = frozenset({CertStatus.REVOKED, CertStatus.SUPERSEDED, CertStatus.UNKNOWN_SERIAL})


@dataclass(frozen=True, slots=True)
class AgentRow:
    """One registered identity (``fedbus agents list``)."""

    agent_id: str
    role: Role
    status: AgentStatus
    serial: int
    fingerprint: str
    enrolled_at: dt.datetime
    last_seen: dt.datetime | None
    revoked_at: dt.datetime | None
    expires_at: dt.datetime | None = None  # notAfter of the current certificate


class Registry:
    """The registry database. Open with ``Registry.open(path)``; close with ``close()`` or
    use it as a context manager."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self._lock = threading.Lock()
        self.path = path

    @classmethod
    def open(cls, path: Path) -> Self:
        """Open (creating it and its tables if needed) the registry at ``path``. A new file
        is created 0600 before SQLite opens it (its ``-wal`` and ``-shm`` files take the
        database's mode): it names every enrolled agent and the token hashes.

        Raises:
            IdentityError: reason ``unreadable``: not a registry or not openable.
        """
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        except OSError as exc:
            raise IdentityError("unreadable", f"cannot create registry {path}: {exc}") from exc
        return cls(store.connect(path), path)

    def close(self) -> None:
        """Close the database (idempotent)."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- tokens ------------------------------------------------------------------------

    def create_token(
        self, agent_id: str, ttl_seconds: float, *, now: dt.datetime | None = None
    ) -> str:
        """A new one-time enrollment token for ``agent_id``, valid for ``ttl_seconds``.

        The token (``secrets.token_urlsafe(32)``, 256 bits) is returned once and never
        stored: the registry keeps its SHA-256 only.

        Raises:
            ValueError: ``ttl_seconds`` is not positive.
        """
        if not ttl_seconds > 0:
            raise ValueError(f"a token's ttl must be positive, not {ttl_seconds}")
        with self._lock:
            return tokens.insert_token(self._db, agent_id, created=to_unix(now), ttl=ttl_seconds)

    def create_tokens(
        self, agent_ids: Sequence[str], ttl_seconds: float, *, now: dt.datetime | None = None
    ) -> dict[str, str]:
        """``create_token`` for each of ``agent_ids``, in one transaction (one fsync, where
        a fleet of 1,000 took 1,000). Returns agent id → its token.

        Raises:
            ValueError: ``ttl_seconds`` is not positive.
        """
        if not ttl_seconds > 0:
            raise ValueError(f"a token's ttl must be positive, not {ttl_seconds}")
        created = to_unix(now)
        with self.transaction() as db:
            return {
                a: tokens.insert_token(db, a, created=created, ttl=ttl_seconds) for a in agent_ids
            }

    def redeem_token(self, token: str, agent_id: str, now: dt.datetime | None = None) -> None:
        """Use ``token`` up for ``agent_id``: atomically, so of two concurrent redemptions
        (threads or processes) exactly one succeeds.

        Raises:
            IdentityError: reason ``bad_token`` (no such token), ``wrong_agent`` (issued for
                another agent id; the token stays usable for that one), ``used_token``
                (already used) or ``expired_token`` (past its expiry).
        """
        with self._lock:
            tokens.redeem(self._db, token, agent_id, when=to_unix(now))

    # -- agents and certificates -------------------------------------------------------

    def record_enrollment(
        self, identity: Identity, cert: x509.Certificate, *, now: dt.datetime | None = None
    ) -> list[int]:
        """Register ``cert`` as ``identity.agent_id``'s current certificate.

        An agent that enrolls again (a new token, a new key) gets its new certificate
        recorded and every earlier unrevoked certificate revoked ("superseded"); a revoked
        agent that the operator gave a new token becomes ``enrolled`` again, its old serials
        staying revoked.

        Returns:
            The serials this call revoked (superseded), to add to the CRL.

        Raises:
            ValueError: ``identity.serial`` is not ``cert``'s serial.
            IdentityError: reason ``revoked`` (this very certificate was revoked: recording
                it again never un-revokes it), ``serial_conflict`` (the serial is recorded
                for another agent) or ``role_conflict`` (the agent id is registered with
                another role: a trainer can never take over the aggregator's id).
        """
        if identity.serial != cert.serial_number:
            raise ValueError("the identity's serial is not the certificate's")
        with self.transaction() as db:
            return records.record(db, identity, cert, when=to_unix(now))

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection inside one write transaction (``BEGIN IMMEDIATE``, under this
        registry's lock), committed when the block ends and rolled back when it raises:
        one fsync for everything written in it (``agent.identity.batch``)."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            yield self._db

    def revoke(self, agent_id: str, *, now: dt.datetime | None = None) -> list[int]:
        """Revoke ``agent_id``: its status becomes ``revoked``, every certificate it ever had
        is revoked, and its unused tokens are deleted (re-admitting it takes a new token).
        Idempotent: revoking again changes nothing and returns the same serials.

        Returns:
            Every revoked serial of this agent, sorted.

        Raises:
            IdentityError: reason ``unknown_agent``: no such agent in the registry.
        """
        when = to_unix(now)
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            cursor = self._db.execute(
                "UPDATE agents SET status = 'revoked', revoked_at = COALESCE(revoked_at, ?)"
                " WHERE agent_id = ?",
                (when, agent_id),
            )
            if cursor.rowcount != 1:
                raise IdentityError("unknown_agent", f"no agent {agent_id!r} in the registry")
            self._db.execute(
                "UPDATE certificates SET revoked_at = ? WHERE agent_id = ? AND revoked_at IS NULL",
                (when, agent_id),
            )
            self._db.execute(
                "DELETE FROM tokens WHERE agent_id = ? AND used_at IS NULL", (agent_id,)
            )
            serials = self._db.execute(
                "SELECT serial FROM certificates WHERE agent_id = ? AND revoked_at IS NOT NULL",
                (agent_id,),
            ).fetchall()
        return sorted(int(s) for (s,) in serials)

    def cert_status(self, agent_id: str, serial: int) -> CertStatus:
        """What the registry says about certificate ``serial`` presented by ``agent_id``
        (see the module docstring)."""
        with self._lock:
            agent = self._db.execute(
                "SELECT status, serial FROM agents WHERE agent_id = ?", (agent_id,)
            ).fetchone()
            cert = self._db.execute(
                "SELECT agent_id, revoked_at FROM certificates WHERE serial = ?", (str(serial),)
            ).fetchone()
        if cert is not None and cert[0] != agent_id:
            return CertStatus.UNKNOWN_SERIAL  # a serial that belongs to someone else
        if agent is None:
            return CertStatus.REVOKED if cert is not None else CertStatus.UNKNOWN_AGENT
        status, current = agent
        if status == AgentStatus.REVOKED:
            return CertStatus.REVOKED
        if cert is None:
            return CertStatus.UNKNOWN_SERIAL
        if current != str(serial):
            return CertStatus.SUPERSEDED
        return CertStatus.REVOKED if cert[1] is not None else CertStatus.CURRENT

    def is_revoked(self, agent_id: str, serial: int) -> bool:
        """True when certificate ``serial`` of ``agent_id`` must not be trusted: revoked,
        superseded by a re-enrollment, its agent revoked, or a serial the registry does not
        know for a known agent. False for the current certificate, and for an agent id the
        registry has never seen (use ``cert_status`` to tell that case apart)."""
        return self.cert_status(agent_id, serial) in UNTRUSTED

    def revoked_serials(self) -> list[tuple[int, dt.datetime]]:
        """Every revoked certificate as ``(serial, revoked_at)``, oldest first (the CRL)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT serial, revoked_at FROM certificates WHERE revoked_at IS NOT NULL"
                " ORDER BY revoked_at, serial"
            ).fetchall()
        return [(int(s), dt.datetime.fromtimestamp(t, dt.UTC)) for s, t in rows]

    def agent(self, agent_id: str) -> AgentRow | None:
        """The row of ``agent_id``, or None."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM agents WHERE agent_id = ?",  # noqa: S608 - constant
                (agent_id,),
            ).fetchone()
        return None if row is None else _row(row)

    def agents(self) -> list[AgentRow]:
        """Every registered identity, by agent id."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM agents ORDER BY agent_id"  # noqa: S608 - constant
            ).fetchall()
        return [_row(r) for r in rows]

    def touch_many(self, agent_ids: Sequence[str], when: dt.datetime | None = None) -> None:
        """``touch`` for each of ``agent_ids``, in one transaction (one fsync, where a
        thousand agents joining made a thousand on the aggregator's event loop)."""
        with self.transaction() as db:
            db.executemany(
                "UPDATE agents SET last_seen = MAX(COALESCE(last_seen, 0), ?) WHERE agent_id = ?",
                [(to_unix(when), a) for a in agent_ids],
            )

    def touch(self, agent_id: str, when: dt.datetime | None = None) -> bool:
        """Record that ``agent_id`` was seen at ``when`` (now). Returns False (and records
        nothing) for an agent id that is not registered."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE agents SET last_seen = MAX(COALESCE(last_seen, 0), ?) WHERE agent_id = ?",
                (to_unix(when), agent_id),
            )
        return cursor.rowcount == 1


_COLUMNS = (
    "agent_id, role, status, serial, fingerprint, enrolled_at, last_seen, revoked_at, expires_at"
)
_Row = tuple[str, str, str, str, str, float, float | None, float | None, float | None]


def _row(row: _Row) -> AgentRow:
    agent_id, role, status, serial, fp, enrolled_at, last_seen, revoked_at, expires_at = row
    return AgentRow(
        agent_id=agent_id,
        role=Role(role),
        status=AgentStatus(status),
        serial=int(serial),
        fingerprint=fp,
        enrolled_at=dt.datetime.fromtimestamp(enrolled_at, dt.UTC),
        last_seen=from_unix(last_seen),
        revoked_at=from_unix(revoked_at),
        expires_at=from_unix(expires_at),
    )
