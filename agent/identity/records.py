"""Recording an enrollment in the registry's tables (``agent.identity.store``), inside a
transaction the caller holds (``Registry.transaction``): one device's certificate at a time,
alone (``Registry.record_enrollment``) or many in one transaction (``agent.identity.batch``).
"""

from __future__ import annotations

import sqlite3

from cryptography import x509

from agent.errors import IdentityError
from agent.identity.certificates import fingerprint
from agent.role import Identity


def record(
    db: sqlite3.Connection, identity: Identity, cert: x509.Certificate, *, when: float
) -> list[int]:
    """Register ``cert`` as ``identity.agent_id``'s current certificate at ``when`` (Unix
    seconds), revoking ("superseding") its earlier unrevoked certificates. Every check runs
    before the first write, so a refusal leaves the tables as they were.

    Returns:
        The serials superseded, to add to the CRL.

    Raises:
        IdentityError: reason ``revoked``, ``serial_conflict`` or ``role_conflict`` (see
            ``Registry.record_enrollment``).
    """
    serial, fp = str(cert.serial_number), fingerprint(cert)
    exp = cert.not_valid_after_utc.timestamp()
    known = db.execute(
        "SELECT agent_id, revoked_at FROM certificates WHERE serial = ?", (serial,)
    ).fetchone()
    if known is not None and known[0] != identity.agent_id:
        raise IdentityError("serial_conflict", f"serial {serial} belongs to {known[0]!r}")
    if known is not None and known[1] is not None:
        raise IdentityError("revoked", f"certificate {serial} was revoked")
    registered = db.execute(
        "SELECT role FROM agents WHERE agent_id = ?", (identity.agent_id,)
    ).fetchone()
    if registered is not None and registered[0] != str(identity.role):
        raise IdentityError(
            "role_conflict",
            f"{identity.agent_id!r} is registered as {registered[0]}, "
            f"not {identity.role}: pick another agent id",
        )
    superseded = [
        int(s)
        for (s,) in db.execute(
            "SELECT serial FROM certificates WHERE agent_id = ? AND revoked_at IS NULL"
            " AND serial != ?",
            (identity.agent_id, serial),
        )
    ]
    db.execute(
        "UPDATE certificates SET revoked_at = ? WHERE agent_id = ?"
        " AND revoked_at IS NULL AND serial != ?",
        (when, identity.agent_id, serial),
    )
    db.execute(
        "INSERT OR IGNORE INTO certificates (serial, agent_id, fingerprint, issued_at)"
        " VALUES (?, ?, ?, ?)",
        (serial, identity.agent_id, fp, when),
    )
    db.execute(
        "INSERT OR REPLACE INTO agents (agent_id, role, status, serial, fingerprint,"
        " enrolled_at, last_seen, revoked_at, expires_at) VALUES (?, ?, 'enrolled', ?,"
        " ?, ?, (SELECT last_seen FROM agents WHERE agent_id = ?), NULL, ?)",
        (identity.agent_id, str(identity.role), serial, fp, when, identity.agent_id, exp),
    )
    return superseded
