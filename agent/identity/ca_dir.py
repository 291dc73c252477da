"""A CA directory: the federation's CA, its identities, registry and CRL on the aggregator
host (ARCHITECTURE.md §6). What ``fedbus ca|token|revoke`` do, as library functions::

    ca.pem  ca.key (0600)            the federation CA (``init_ca_dir``)
    aggregator.pem  aggregator.key   the aggregator's identity
    enroll.pem  enroll.key           the shared enroll-only identity for unenrolled devices
    registry.sqlite                  agents, certificates, tokens (``agent.identity.registry``)
    crl.pem                          revoked certificates, for the brokers (``write_crl``)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from agent.errors import IdentityError
from agent.identity import ca, certificates, pem
from agent.identity.registry import CRL_FILE, REGISTRY_FILE, Registry
from agent.role import Identity, Role

#: Files of a CA directory besides the registry and the CRL.
CA_CERT, CA_KEY = "ca.pem", "ca.key"
AGGREGATOR_CERT, AGGREGATOR_KEY = "aggregator.pem", "aggregator.key"
ENROLL_CERT, ENROLL_KEY = "enroll.pem", "enroll.key"
#: The agent id of the shared enroll-only identity.
ENROLL_ID = "enroll"


@dataclass(frozen=True, slots=True)
class OfflineSigned:
    """A certificate ``sign_offline`` issued and recorded."""

    cert: x509.Certificate
    identity: Identity
    superseded: list[int]  # earlier serials of the agent it revoked (now in the CRL)
    ca_fingerprint: str


def registry_path(ca_dir: Path) -> Path:
    """``ca_dir/registry.sqlite``, which must exist.

    Raises:
        IdentityError: reason ``unreadable``: no registry there.
    """
    path = ca_dir / REGISTRY_FILE
    if not path.is_file():
        raise IdentityError("unreadable", f"no registry at {path} (run `fedbus ca init` first)")
    return path


def init_ca_dir(
    ca_dir: Path, federation: str, *, aggregator_id: str = "aggregator", valid_days: int = 3650
) -> ca.CertificateAuthority:
    """Create the CA (valid ``valid_days``), the aggregator's identity (CN
    ``aggregator_id``), the shared enroll identity, the registry listing both and an empty
    CRL in ``ca_dir`` (created 0700). Returns the CA.

    Raises:
        IdentityError: reason ``ca_exists``: ``ca_dir`` already holds a CA or registry
            (nothing is touched).
    """
    existing = [n for n in (CA_CERT, CA_KEY, REGISTRY_FILE) if (ca_dir / n).exists()]
    if existing:
        raise IdentityError(
            "ca_exists",
            f"{ca_dir} already holds a CA ({', '.join(existing)}); refusing to overwrite it "
            "(use another --dir)",
        )
    authority = ca.init_ca(federation, valid_days=valid_days)
    aggregator_key, aggregator_cert = ca.issue(authority, aggregator_id, role=Role.AGGREGATOR)
    enroll_key, enroll_cert = ca.issue(authority, ENROLL_ID, role=Role.ENROLL)
    ca_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca.save_ca(authority, ca_dir)
    pem.write_pem(ca_dir / AGGREGATOR_CERT, aggregator_cert)
    pem.write_private_key(ca_dir / AGGREGATOR_KEY, aggregator_key)
    pem.write_pem(ca_dir / ENROLL_CERT, enroll_cert)
    pem.write_private_key(ca_dir / ENROLL_KEY, enroll_key)
    with Registry.open(ca_dir / REGISTRY_FILE) as registry:
        for cert in (aggregator_cert, enroll_cert):
            registry.record_enrollment(certificates.identity_of(cert), cert)
    (ca_dir / REGISTRY_FILE).chmod(0o600)
    pem.write_pem(ca_dir / CRL_FILE, ca.build_crl(authority, []))
    return authority


def create_token(ca_dir: Path, agent_id: str, ttl_seconds: float) -> str:
    """A new one-time token for the device ``agent_id`` (``Registry.create_token``).

    Raises:
        IdentityError: reason ``bad_name`` (not 1-64 of [A-Za-z0-9_-]), ``role_conflict``
            (the id is the aggregator's or the enroll identity's) or ``unreadable``.
    """
    return create_tokens(ca_dir, [agent_id], ttl_seconds)[agent_id]


def create_tokens(ca_dir: Path, agent_ids: Sequence[str], ttl_seconds: float) -> dict[str, str]:
    """``create_token`` for each of ``agent_ids`` (a fleet), in one registry transaction;
    none is created when one id is refused.

    Raises:
        IdentityError: as ``create_token``, for the first id refused.
    """
    for agent_id in agent_ids:
        if not certificates.NAME_RE.match(agent_id):
            raise IdentityError("bad_name", f"agent id {agent_id!r} must be 1-64 of [A-Za-z0-9_-]")
    with Registry.open(registry_path(ca_dir)) as registry:
        for agent_id in agent_ids:
            row = registry.agent(agent_id)
            if row is not None and row.role is not Role.TRAINER:
                raise IdentityError(
                    "role_conflict", f"{agent_id!r} is the {row.role} identity, not a device's id"
                )
        return registry.create_tokens(agent_ids, ttl_seconds)


def sign_offline(
    ca_dir: Path, csr_path: Path, *, role: Role = Role.TRAINER, valid_days: int = 365
) -> OfflineSigned:
    """Sign a device's CSR file (PEM, RFC 2986) without the bus (air-gapped enrollment), record
    it in the registry and, when it supersedes earlier certificates, rewrite the CRL.

    Raises:
        IdentityError: reason ``bad_csr`` (not a PEM request, or refused by ``sign_csr``),
            ``unreadable``, or a ``record_enrollment`` conflict.
    """
    authority = ca.load_ca(ca_dir)
    try:
        csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    except ValueError as exc:
        raise IdentityError("bad_csr", f"{csr_path} is not a PEM certificate request") from exc
    cert = ca.sign_csr(authority, csr, role=role, valid_days=valid_days)
    identity = certificates.identity_of(cert)
    with Registry.open(registry_path(ca_dir)) as registry:
        superseded = registry.record_enrollment(identity, cert)
        if superseded:
            write_crl(ca_dir, registry)
    return OfflineSigned(cert, identity, superseded, authority.fingerprint)


def write_crl(ca_dir: Path, registry: Registry) -> Path:
    """Write ``ca_dir/crl.pem``: a CRL (RFC 5280 §5) signed by the CA in ``ca_dir`` listing
    every revoked serial in ``registry``. Returns its path.

    Raises:
        IdentityError: the CA cannot be loaded (reason ``unreadable``).
    """
    authority = ca.load_ca(ca_dir)
    path = ca_dir / CRL_FILE
    pem.write_pem(path, ca.build_crl(authority, registry.revoked_serials()))
    return path


def revoke_agent(ca_dir: Path, agent_id: str) -> list[int]:
    """Revoke ``agent_id`` in the registry of the CA directory ``ca_dir`` and rewrite
    ``ca_dir/crl.pem``. What ``fedbus revoke`` does; brokers must then reload the CRL.

    Returns:
        Every revoked serial of the agent.

    Raises:
        IdentityError: reason ``unknown_agent`` (no such agent) or ``unreadable`` (no CA or
            registry in ``ca_dir``).
    """
    with Registry.open(registry_path(ca_dir)) as registry:
        serials = registry.revoke(agent_id)
        write_crl(ca_dir, registry)
    return serials
