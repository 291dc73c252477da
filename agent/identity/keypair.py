"""A private key and its certificate replaced as a pair (key rotation on renewal).

Two files cannot be renamed in one step, so the new pair is written in an order a crash
cannot break, and read back by ``recover_pair`` (which every loader of the pair calls):

1. ``stage_key``: the new key is written beside the old one as ``<key_file>.next``
   (``agent.atomic``, 0600; beside every copy of the key) before its CSR leaves the device;
2. ``commit_pair``: once the CA answered, the certificate is written over every copy of the
   old one (``[identity]`` and ``[tls]`` may name two), then the new key over every copy of
   the key, then the ``.next`` files are removed.

A crash before step 2 leaves the old pair and a stale ``.next`` (dropped by
``recover_pair``: no certificate on disk names it); a crash inside step 2 leaves at least
one certificate naming the staged key, and ``recover_pair`` finishes the commit from
``.next``. Whichever the moment, the loader gets a certificate and the key it certifies.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.errors import IdentityError
from agent.identity.pem import (
    PrivateKey,
    load_certificate,
    load_private_key,
    write_pem,
    write_private_key,
)

if TYPE_CHECKING:
    from cryptography import x509

log = structlog.get_logger(__name__)


def distinct(*paths: Path | None) -> list[Path]:
    """``paths`` without the Nones and the repeats (by resolved path), in order: the
    copies of one file that ``[identity]`` and ``[tls]`` may both name."""
    found: dict[Path, Path] = {}
    for path in paths:
        if path is not None:
            found.setdefault(path.resolve(), path)
    return list(found.values())


def staged(key_file: Path) -> Path:
    """Where the next key waits for its certificate."""
    return key_file.with_name(key_file.name + ".next")


def certifies(cert: x509.Certificate, key: PrivateKey) -> bool:
    """Whether ``cert`` is the certificate of ``key`` (same public key)."""
    spki = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)


def stage_key(key_files: Sequence[Path]) -> PrivateKey:
    """A new ECDSA P-256 key, written as ``staged(k)`` (0600) for every copy ``k`` of the
    key. Raises: OSError."""
    key = ec.generate_private_key(ec.SECP256R1())
    for key_file in key_files:
        write_private_key(staged(key_file), key)
    return key


def commit_pair(
    cert_files: Sequence[Path], key_files: Sequence[Path], cert: x509.Certificate, key: PrivateKey
) -> None:
    """Install ``cert`` and ``key`` (the staged one) in every copy: the certificates first,
    then the keys, then the stages removed (see the module docstring). Raises: OSError."""
    for cert_file in cert_files:
        write_pem(cert_file, cert)
    for key_file in key_files:
        write_private_key(key_file, key)
    _unstage(key_files)


def recover_pair(cert_files: Sequence[Path], key_files: Sequence[Path]) -> None:
    """Leave the copies of one certificate (``cert_files``) and of its key (``key_files``)
    a matching pair after an interrupted rotation: once any certificate copy names the
    staged key, the commit is finished in every copy; otherwise the stages are dropped (no
    certificate was written yet). Nothing to do without a ``.next`` file.

    Raises:
        IdentityError: unreadable files (``unreadable``).
        OSError: a file cannot be written.
    """
    stages = [staged(k) for k in key_files if staged(k).exists()]
    if not stages or not cert_files:
        return
    try:
        nxt = load_private_key(stages[0])
    except IdentityError:
        _unstage(key_files)  # not a key: nothing was certified for it
        return
    certs = [load_certificate(c) for c in cert_files]
    new = next((c for c in certs if certifies(c, nxt)), None)
    if new is not None:
        commit_pair(cert_files, key_files, new, nxt)
        log.warning("key_rotation_completed", key_files=[str(k) for k in key_files])
    else:
        _unstage(key_files)


def _unstage(key_files: Sequence[Path]) -> None:
    for key_file in key_files:
        with contextlib.suppress(FileNotFoundError):
            staged(key_file).unlink()
