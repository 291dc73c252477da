"""One-time enrollment tokens in the registry's ``tokens`` table (``agent.identity.store``).

A token is ``secrets.token_urlsafe(32)``: 256 random bits, returned once to the operator and
never stored; the table keeps its SHA-256 only, so a copy of the database does not let anyone
enroll. A token is bound to one agent id, expires, and redeems exactly once, even when two
connections (threads or processes) try at the same time: the final ``UPDATE ... WHERE
used_at IS NULL`` succeeds for one of them only.

These functions run on a connection the caller serialises (``Registry`` holds its lock).
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3

from agent.errors import IdentityError
from agent.identity.store import from_unix

#: Bytes of randomness in a token (``secrets.token_urlsafe``): 256 bits.
TOKEN_BYTES = 32


def hash_token(token: str) -> str:
    """The SHA-256 (hex) under which a token is stored and may be logged."""
    return hashlib.sha256(token.encode()).hexdigest()


def insert_token(db: sqlite3.Connection, agent_id: str, *, created: float, ttl: float) -> str:
    """Store a new token for ``agent_id``, created at ``created`` (Unix seconds) and valid
    for ``ttl`` seconds; returns the token itself (the only time it is seen)."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    db.execute(
        "INSERT INTO tokens (token_sha256, agent_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
        (hash_token(token), agent_id, created, created + ttl),
    )
    return token


def redeem(db: sqlite3.Connection, token: str, agent_id: str, *, when: float) -> None:
    """Use ``token`` up for ``agent_id`` at ``when`` (Unix seconds).

    Raises:
        IdentityError: reason ``bad_token`` (no such token), ``wrong_agent`` (issued for
            another agent id; the token stays usable for that one), ``used_token`` (already
            used) or ``expired_token`` (past its expiry).
    """
    digest = hash_token(token)
    row = db.execute(
        "SELECT agent_id, expires_at, used_at FROM tokens WHERE token_sha256 = ?",
        (digest,),
    ).fetchone()
    if row is None:
        raise IdentityError("bad_token", "unknown enrollment token")
    owner, expires_at, used_at = row
    if owner != agent_id:
        raise IdentityError(
            "wrong_agent", f"the token was issued for another agent id, not {agent_id!r}"
        )
    if used_at is not None:
        raise IdentityError("used_token", "the enrollment token was already used")
    if expires_at <= when:
        raise IdentityError(
            "expired_token", f"the enrollment token expired at {from_unix(expires_at)}"
        )
    cursor = db.execute(
        "UPDATE tokens SET used_at = ? WHERE token_sha256 = ? AND used_at IS NULL"
        " AND expires_at > ?",
        (when, digest, when),
    )
    if cursor.rowcount != 1:  # another connection used it between SELECT and UPDATE
        raise IdentityError("used_token", "the enrollment token was already used")
