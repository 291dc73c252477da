"""Reading and checking certificates the federation CA issued (X.509, RFC 5280).

A certificate's subject names an identity: CN = agent id, OU = role, O = federation
(``agent.role.Identity``). ``verify_issued`` is the one chain check: issued by the pinned CA
(ECDSA-SHA256 over P-256), valid now, of the CA's federation. The CA is pinned by the
SHA-256 fingerprint of its DER certificate.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.errors import IdentityError
from agent.role import Identity, Role

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
#: Names only the aggregator and the shared enroll identity may carry.
RESERVED_NAMES = frozenset({"aggregator", "enroll"})


def check_name(value: str, what: str) -> None:
    """Raises ``IdentityError`` (reason ``bad_name``) unless ``value`` is 1-64 of
    [A-Za-z0-9_-] starting with a letter or digit (an agent or federation id)."""
    if not NAME_RE.match(value):
        raise IdentityError("bad_name", f"{what} {value!r} must be 1-64 of [A-Za-z0-9_-]")


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER encoding, lower-case hex (64 characters)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def identity_of(cert: x509.Certificate) -> Identity:
    """The identity a certificate names.

    Raises:
        IdentityError: a subject without CN/OU/O, or an unknown role.
    """

    def one(oid: x509.ObjectIdentifier) -> str:
        values = cert.subject.get_attributes_for_oid(oid)
        if len(values) != 1:
            raise IdentityError("bad_certificate", f"the subject needs exactly one {oid._name}")
        return str(values[0].value)

    try:
        role = Role(one(NameOID.ORGANIZATIONAL_UNIT_NAME))
    except ValueError as exc:
        raise IdentityError("bad_certificate", "unknown role in the certificate") from exc
    return Identity(
        one(NameOID.COMMON_NAME), one(NameOID.ORGANIZATION_NAME), role, cert.serial_number
    )


def verify_issued(
    ca_cert: x509.Certificate, cert: x509.Certificate, *, at: dt.datetime | None = None
) -> Identity:
    """Check that ``cert`` was issued by ``ca_cert``, is valid at ``at`` (now) and names an
    identity of the CA's federation.

    Raises:
        IdentityError: reason ``unknown_issuer``, ``bad_signature``, ``expired`` or
            ``wrong_federation``.
    """
    if cert.issuer != ca_cert.subject:
        raise IdentityError("unknown_issuer", "the certificate was not issued by this CA")
    public = ca_cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise IdentityError("bad_certificate", "the CA key is not ECDSA")
    try:
        public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise IdentityError("bad_signature", "the certificate's CA signature is invalid") from exc
    now = at or dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise IdentityError("expired", "the certificate is not valid now")
    identity = identity_of(cert)
    federations = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if not federations or identity.federation != federations[0].value:
        raise IdentityError("wrong_federation", "the certificate names another federation")
    return identity
