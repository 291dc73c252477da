"""Keys, certificates and CRLs on disk, as PEM.

A private key is PKCS#8, unencrypted, mode 0600 from the moment it exists; public material
(certificates, CRLs) is mode 0644. Both are written atomically (``agent.atomic``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.atomic import PRIVATE, write_atomic
from agent.errors import IdentityError

if TYPE_CHECKING:
    from cryptography import x509

#: Every fedbus key: ECDSA over P-256.
PrivateKey = ec.EllipticCurvePrivateKey


def write_private_key(path: Path, key: PrivateKey) -> None:
    """PEM (PKCS#8, unencrypted) with mode 0600 from the moment it exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_atomic(path, data, mode=PRIVATE)


def write_pem(path: Path, *objects: x509.Certificate | x509.CertificateRevocationList) -> None:
    """Certificates / CRLs as PEM (public material, mode 0644)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, b"".join(o.public_bytes(serialization.Encoding.PEM) for o in objects))


def load_private_key(path: Path) -> PrivateKey:
    """Raises ``IdentityError`` (reason ``unreadable``) for a missing or non-P-256 key."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise IdentityError("unreadable", f"cannot read private key {path}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise IdentityError("unreadable", f"{path} is not an ECDSA private key")
    return key


def load_certificate(path: Path) -> x509.Certificate:
    """Raises ``IdentityError`` (reason ``unreadable``)."""
    from cryptography import x509  # at use: a trainer without identities never loads X.509

    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise IdentityError("unreadable", f"cannot read certificate {path}: {exc}") from exc
