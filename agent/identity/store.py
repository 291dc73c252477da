"""The registry's SQLite file (``agent.identity.registry``): its schema, opening it, and the
time format it stores.

One file (stdlib ``sqlite3``, WAL journal, ``synchronous=FULL``), three tables:

- ``agents``: one row per agent id: role, status (``enrolled`` | ``revoked``), the serial
  and SHA-256 fingerprint of its *current* certificate, enrolled at, last seen, revoked at,
  and when that certificate expires (``expires_at``, a column added to older files on open).
- ``certificates``: every certificate ever recorded (serial, agent id, fingerprint, issued
  at, revoked at): the history that ``agents`` overwrites.
- ``tokens``: one-time enrollment tokens, by SHA-256 only (``agent.identity.tokens``).

Serials are stored as decimal text: X.509 serials are up to 20 octets (RFC 5280 §4.1.2.2),
more than SQLite's 64-bit integers hold. Times are stored as Unix seconds (REAL) and returned
as timezone-aware UTC datetimes.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

from agent.errors import IdentityError

#: Seconds a writer waits for another connection's write lock.
BUSY_TIMEOUT = 10.0
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    agent_id    TEXT PRIMARY KEY,
    role        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('enrolled', 'revoked')),
    serial      TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    enrolled_at REAL NOT NULL,
    last_seen   REAL,
    revoked_at  REAL
);
CREATE TABLE IF NOT EXISTS certificates (
    serial      TEXT PRIMARY KEY,
    agent_id    TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    issued_at   REAL NOT NULL,
    revoked_at  REAL
);
CREATE INDEX IF NOT EXISTS certificates_agent ON certificates (agent_id);
CREATE TABLE IF NOT EXISTS tokens (
    token_sha256 TEXT PRIMARY KEY,
    agent_id     TEXT NOT NULL,
    created_at   REAL NOT NULL,
    expires_at   REAL NOT NULL,
    used_at      REAL
);
"""


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating it and its tables if needed) the registry file at ``path``, in
    autocommit mode and usable from any thread (the caller serialises access).

    Raises:
        IdentityError: reason ``unreadable``: not openable, not a registry, or another
            schema version than ``SCHEMA_VERSION``.
    """
    try:
        db = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise IdentityError("unreadable", f"cannot open registry {path}: {exc}") from exc
    try:
        _prepare(db, path)
    except sqlite3.Error as exc:
        db.close()
        raise IdentityError("unreadable", f"{path} is not a fedbus registry: {exc}") from exc
    except IdentityError:
        db.close()
        raise
    return db


def _prepare(db: sqlite3.Connection, path: Path) -> None:
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version not in (0, SCHEMA_VERSION):
        raise IdentityError(
            "unreadable", f"registry {path} has schema {version}, not {SCHEMA_VERSION}"
        )
    db.executescript(_SCHEMA)
    columns = {row[1] for row in db.execute("PRAGMA table_info(agents)")}
    if "expires_at" not in columns:  # nullable and additive: older registries gain it
        db.execute("ALTER TABLE agents ADD COLUMN expires_at REAL")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def to_unix(when: dt.datetime | None) -> float:
    """``when`` (None: now) as stored: Unix seconds.

    Raises:
        ValueError: ``when`` is naive (no time zone).
    """
    if when is None:
        return dt.datetime.now(dt.UTC).timestamp()
    if when.tzinfo is None:
        raise ValueError("registry times must be timezone-aware")
    return when.timestamp()


def from_unix(value: float | None) -> dt.datetime | None:
    """A stored time (Unix seconds) as a UTC datetime; None stays None."""
    return None if value is None else dt.datetime.fromtimestamp(value, dt.UTC)
