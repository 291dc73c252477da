"""The federation's certificate authority: X.509 (RFC 5280) with ECDSA P-256 keys.

One CA per federation (``fedbus ca init``). It issues a certificate to every identity:

=============  =====================================================================
role (OU)      what the certificate lets its holder do
=============  =====================================================================
trainer        a device: its own update/secagg/metrics topics, its inbox, broadcasts
aggregator     runs rounds; signs the global model; may use every federation topic
enroll         the shared identity of not-yet-enrolled devices: the enroll topic only
broker         the broker's TLS server certificate (SAN: its host names / addresses)
=============  =====================================================================

Subject: CN = agent id, OU = role, O = federation. The same key authenticates the holder to
the broker (mTLS; CN = the broker's user name) and signs its messages (ECDSA-SHA256). P-256
is used because both brokers' TLS stacks (OpenSSL for mosquitto, Go for nats-server) and
Python's ``ssl`` accept it everywhere. The CA is pinned by the SHA-256 fingerprint of its
DER certificate (``agent.identity.certificates``, which also checks what it issued; keys and
certificates on disk: ``agent.identity.pem``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.errors import IdentityError
from agent.identity.certificates import RESERVED_NAMES, check_name, fingerprint
from agent.identity.pem import (
    PrivateKey,
    load_certificate,
    load_private_key,
    write_pem,
    write_private_key,
)
from agent.role import Role


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """A federation's CA: its certificate and private key."""

    federation: str
    cert: x509.Certificate
    key: PrivateKey

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the DER certificate, 64 hex characters (what devices pin)."""
        return fingerprint(self.cert)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_key() -> PrivateKey:
    """A fresh ECDSA P-256 private key (generated locally; it never leaves its owner)."""
    return ec.generate_private_key(ec.SECP256R1())


def _subject(agent_id: str, federation: str, role: Role) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, str(role)),
            x509.NameAttribute(NameOID.COMMON_NAME, agent_id),
        ]
    )


def init_ca(federation: str, *, valid_days: int = 3650) -> CertificateAuthority:
    """A new self-signed CA for ``federation`` (CN = "fedbus CA <federation>").

    Raises:
        IdentityError: a federation id outside [A-Za-z0-9_-]{1,64}.
    """
    check_name(federation, "federation")
    key = new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation),
            x509.NameAttribute(NameOID.COMMON_NAME, f"fedbus CA {federation}"),
        ]
    )
    now = _utcnow()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(federation, cert, key)


def build_csr(
    key: PrivateKey, *, agent_id: str, federation: str, role: Role = Role.TRAINER
) -> x509.CertificateSigningRequest:
    """A CSR naming ``agent_id`` (what ``fedbus enroll`` sends with its token)."""
    check_name(agent_id, "agent id")
    check_name(federation, "federation")
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_subject(agent_id, federation, role))
        .sign(key, hashes.SHA256())
    )


def sign_csr(
    ca: CertificateAuthority,
    csr: x509.CertificateSigningRequest,
    *,
    agent_id: str | None = None,
    role: Role = Role.TRAINER,
    valid_days: int = 365,
    hosts: Sequence[str] = (),
) -> x509.Certificate:
    """Issue a certificate for a CSR. The subject is rebuilt by the CA (CN from the CSR or
    ``agent_id``, OU = ``role``, O = the CA's federation), never copied blindly.

    Args:
        hosts: for ``Role.BROKER``: DNS names / IP addresses for the SAN.

    Raises:
        IdentityError: the CSR's self-signature is invalid, its key is not P-256, or its CN
            is not a valid agent id (or differs from ``agent_id`` when that is given).
    """
    if not csr.is_signature_valid:
        raise IdentityError("bad_csr", "the CSR's signature does not verify")
    public = csr.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
        raise IdentityError("bad_csr", "the CSR's key must be ECDSA P-256")
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(names[0].value) if names else ""
    if agent_id is not None and cn != agent_id:
        raise IdentityError("bad_csr", f"the CSR names {cn!r}, not {agent_id!r}")
    check_name(cn, "agent id")
    if role is Role.TRAINER and cn in RESERVED_NAMES:
        # mosquitto knows an identity by its CN alone: a trainer named like these would get
        # their broker rights.
        raise IdentityError("reserved_name", f"{cn!r} is reserved; a trainer cannot take it")
    return _issue(ca, public, cn, role, valid_days=valid_days, hosts=hosts)


def issue(
    ca: CertificateAuthority,
    agent_id: str,
    *,
    role: Role = Role.TRAINER,
    valid_days: int = 365,
    hosts: Sequence[str] = (),
) -> tuple[PrivateKey, x509.Certificate]:
    """A new key and its certificate in one step (for the aggregator, the broker, the
    shared enroll identity and tests; devices use ``build_csr`` + ``sign_csr``)."""
    check_name(agent_id, "agent id")
    key = new_key()
    return key, _issue(ca, key.public_key(), agent_id, role, valid_days=valid_days, hosts=hosts)


def _issue(
    ca: CertificateAuthority,
    public: ec.EllipticCurvePublicKey,
    cn: str,
    role: Role,
    *,
    valid_days: int,
    hosts: Sequence[str],
) -> x509.Certificate:
    now = _utcnow()
    # A broker also dials brokers (cluster routes, leaf-node remotes: mTLS both ways).
    usage = (
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        if role is Role.BROKER
        else [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_subject(cn, ca.federation, role))
        .issuer_name(ca.cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if hosts:
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


def build_crl(
    ca: CertificateAuthority,
    revoked: Iterable[tuple[int, dt.datetime]],
    *,
    valid_days: float = 30,
) -> x509.CertificateRevocationList:
    """A CRL (RFC 5280 §5) listing ``(serial, revoked_at)`` pairs, signed by the CA, with
    nextUpdate ``valid_days`` from now: after that mosquitto refuses every handshake, so a
    long-lived aggregator re-signs it well before (``agent.runtime.crl_refresh``)."""
    now = _utcnow()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=valid_days))
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    return builder.sign(ca.key, hashes.SHA256())


def save_ca(ca: CertificateAuthority, directory: Path) -> None:
    """``ca.pem`` and ``ca.key`` (0600) in ``directory``."""
    write_pem(directory / "ca.pem", ca.cert)
    write_private_key(directory / "ca.key", ca.key)


def load_ca(directory: Path) -> CertificateAuthority:
    """The CA saved by ``save_ca``. Raises ``IdentityError``."""
    cert = load_certificate(directory / "ca.pem")
    key = load_private_key(directory / "ca.key")
    names = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if not names:
        raise IdentityError("bad_certificate", f"{directory / 'ca.pem'} names no federation")
    return CertificateAuthority(str(names[0].value), cert, key)
